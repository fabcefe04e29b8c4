"""Stage 3, confirmation: the selected units re-measured on examples that did not select them
(``held_out``: held-out r with intervals and the other measures) and across training seeds and
baselines (``stability``)."""
