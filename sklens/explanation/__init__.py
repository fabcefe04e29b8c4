"""Stage 4, explanation: candidate explanations of a unit (``hypotheses``) ranked on held-out
examples (``explain``), and the evidence a reader checks them against: extremal examples and
token-level activations (``evidence``)."""
