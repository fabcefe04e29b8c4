"""Stage 5, intervention: ablating units (``ablate``), the causal check against random controls
(``check``), steering curves (``steering``), edited inputs and counterfactual tests of an
explanation (``edits``, ``counterfactual``), and attribution of the model's behaviour to every unit
(``attribution``, checked against exact patching in ``attribution_exact``)."""
