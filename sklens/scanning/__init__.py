"""Stage 2, the scan: the auxiliary metrics (``metrics``, multiple-choice scoring in ``choices``),
one pass that correlates every unit at every slot with the metric (``scan``; from activations
already read, ``precomputed``), its result (``result``: ``Scan``, the ``top_k`` table; its
settings, ``scan_settings``), and reading units' activations back (``activations``,
``activation_cache``)."""
