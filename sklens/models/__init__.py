"""Getting a model: loading (``load``), the embedded artifacts fetched from PyPI and converted once
(``artifacts``), tiny random models for tests (``tiny``), and the self-test that a hook means what
sklens assumes (``hook_check``). Plumbing that the method does not depend on."""
