# %% [markdown]
# # A study with the causal follow-up
#
# A scan finds units whose activation *tracks* a metric. This tutorial asks the next
# questions of the same study: which units, if changed, change what the model does
# (attribution, validated by patching), whether the top units move the loss more than random
# units of the same layers and scale (the causal check, with a positive control), and whether it
# is the prompt that made them (the per-unit contrast against an untrained prompt and no prompt).
#
# This page runs on a **tiny random model** so that it builds offline in seconds: its numbers
# show the workflow, not a finding. With `SKLENS_TUTORIAL_MODEL` set to a model name or path it
# runs on that model.

# %%
import os
from pathlib import Path

import sklens

MODEL = os.environ.get("SKLENS_TUTORIAL_MODEL") or str(sklens.tiny_checkpoint("qwen2"))
out = Path(os.environ.get("SKLENS_TUTORIAL_DIR", "tutorial-out")) / "arithmetic"

# %% [markdown]
# ## 1. One study, every follow-up as a stage
#
# BigBench's arithmetic (generated in its format), the per-example loss as the metric, a
# permutation null; then on splits that played no part in training or selection: attribution
# of the loss to every unit (`attribute`), the contrast (`contrast`), and the causal check of the
# top-K against random sets matched in layer, mean |activation| and |score| decile, with the
# attribution's top-K as the positive control (`ablate`). These are the flags `--attribute
# --contrast untrained,no_prompt --ablate` of `sklens run`. A real study uses `n_random=199`:
# a rank p among n random sets cannot go below 1/(n + 1).

# %%
config = sklens.StudyConfig(
    task="arithmetic", model=MODEL, n_train=48, n_val=48, seed=0,
    train=sklens.TrainConfig(n_slots=4, steps=4, eval_every=2, n_plateau=8),
    scan=sklens.ScanConfig(metric="loss", permutations=49),
    select=sklens.SelectConfig(top_k=5),
    confirm=sklens.ConfirmConfig(n_confirm=32, contrast=("untrained", "no_prompt")),
    causal=sklens.CausalConfig(
        attribute=True, ablate=True, ablate_modes=("mean",), n_random=19, n_causal=24,
        dose_response=(1, 2, 5),
    ),
)
summary = sklens.run_study(config, out, progress=False)
sorted(p.name for p in out.iterdir())

# %% [markdown]
# ## 2. Predictive and causal in one table
#
# `joined.csv` holds every unit in either top-K: its correlation score and rank (with the
# permutation p) beside its attribution effect (the estimated change of the mean loss when the
# unit is mean-ablated at its slot), interval and rank. A *candidate* passes both: the FWER null
# and an effect interval that excludes 0.

# %%
import pandas as pd

joined = pd.read_csv(out / "joined.csv")
joined.head(10)

# %%
summary["attribution"]

# %% [markdown]
# ## 3. The causal check, read as a bound
#
# The top-K is ablated and so are the random sets. The rank p asks whether the top-K's change
# is unusual for an edit of that many units; `mde_loss` is the smallest excess the test could
# call significant, and `bound_loss` the largest excess the data leave, so "no effect" is said
# as an upper bound with its size. The positive control shows the test detects an effect where
# there is one.

# %%
causal = pd.read_csv(out / "causal.csv")
causal[~causal.set.str.startswith("random_")].filter(
    regex="^(set|mode|group|d_loss|p_loss|mde_loss|bound_loss|n_neurons)"
)

# %%
pd.read_csv(out / "dose_response.csv").head()

# %% [markdown]
# ## 4. Is it the prompt?
#
# Every unit scored under the trained prompt and under each baseline on the same examples; the
# difference tested per unit with a paired permutation.

# %%
contrast = pd.read_csv(out / "contrast.csv")
contrast.sort_values("p_fwer").head()

# %% [markdown]
# ## 5. The same in Python, one call at a time
#
# `open_run` reloads the model, the prompt, the top-K and the splits (the same examples, from
# the same seed), so each follow-up runs on examples that did not select the units.

# %%
run = sklens.open_run(out)
causal_split = run.task.causal
found = sklens.attribute(run.model, run.prompt, causal_split, "loss", progress=False)
found.top_k(5)

# %% [markdown]
# Attribution estimates; exact patching measures. `exact_effects` patches units one at a time
# (one forward per unit): the reference the estimator is validated against
# (`benchmarks/attribution.py`).

# %%
from sklens.causal.attribution_exact import exact_effects

top = found.top_k(5)
units = [(int(r.layer), int(r.unit), int(r.slot)) for r in top.itertuples()]
exact = exact_effects(run.model, run.prompt, causal_split, units, metric="loss").mean(1)
pd.DataFrame({"unit": units, "estimated": top.effect.values, "exact": exact.numpy()})

# %%
sklens.causal_check(
    run.model, run.prompt, causal_split, run.neurons, modes=("mean",), n_random=19,
    positive=found.top_k(5), progress=False,
).query("group == 'all' and not set.str.startswith('random_')")

# %% [markdown]
# Next: the [explanation of the causal evidence](../explanation/causal.md) says what each
# number can and cannot show, and [the statistics](../explanation/statistics.md) what the null
# tests.
