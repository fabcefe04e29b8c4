# %% [markdown]
# # SAE latents as units
#
# A scan's units need not be MLP neurons: any TransformerLens hook can be the *site*, and with
# SAELens the units are an SAE's latents. sklens runs the SAE's encoder on its hook's
# activation; an edit of a latent adds `decode(new) - decode(old)` to the activation, so the
# SAE's error term is kept and the model is the real one, not its reconstruction. Needs
# `pip install "sklens[sae]"` (SAELens pins TransformerLens 3).
#
# This page runs on a **tiny random model with a random SAE**, so that it builds offline in
# seconds: its latents are random projections, a stand-in that shows the workflow, not a
# finding. A real SAE comes from `SAE.from_pretrained(...)` or `SAE.load_from_disk(path)`.

# %%
import os
from pathlib import Path

from sae_lens import StandardSAE, StandardSAEConfig

import sklens

MODEL = os.environ.get("SKLENS_TUTORIAL_MODEL")  # unset: the tiny random model
model = sklens.load_model(MODEL) if MODEL else sklens.tiny_model("qwen2", seed=0)
examples = sklens.data.bigbench_arithmetic(
    ["2_digit_addition", "2_digit_multiplication"], n_per_subtask=60
)
train, val = sklens.data.train_val_split(examples, 48, seed=0)
train, causal = train[:-24], train[-24:]
prompt = sklens.train_soft_prompt(model, train, n_slots=4, steps=4, seed=0, progress=False)

# %% [markdown]
# ## 1. An SAE on the residual stream of the middle layer

# %%
layer = model.cfg.n_layers // 2
sae_config = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=4 * model.cfg.d_model)
sae_config.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
sae = StandardSAE(sae_config)  # random weights

# %% [markdown]
# ## 2. Scan its latents
#
# The same scan, null and tables as for neurons; the `site` column ties the ids to this SAE (a
# table of latents never edits MLP neurons of the same numbers), and labels read `L{layer}
# F{latent}`.

# %%
metric = sklens.metrics.label("operation", positive="multiplication")
latents = sklens.scan(model, prompt, val, metric, site=sae, n_permutations=49, progress=False)
top = latents.top_k(5)
top

# %%
sklens.neuron_text_view(model, prompt, val, top.head(2), n=3)

# %% [markdown]
# ## 3. Edit them, against random latents of the same SAE

# %%
check = sklens.causal_check(
    model, prompt, causal, top, modes=("zero",), n_random=9, progress=False
)
check[check.group == "all"].filter(regex="^(set|mode|d_loss|p_loss|n_neurons)")

# %% [markdown]
# ## 4. From the command line
#
# An SAE saved by SAELens is a site of `sklens run`: `--site sae:DIR` (several layers:
# `sae:DIR1,DIR2`), loaded offline. Its weight hash is part of the scan's fingerprint, so
# `--resume` with other weights at the same path scans again. The same study from Python:

# %%
saved = Path(os.environ.get("SKLENS_TUTORIAL_DIR", "tutorial-out")) / "sae"
sae.save_model(saved)
config = sklens.StudyConfig(
    task="arithmetic", model=MODEL or str(sklens.tiny_checkpoint("qwen2")), n_train=32,
    n_val=32, train=sklens.TrainConfig(n_slots=4, steps=2, eval_every=1, n_plateau=8),
    scan=sklens.ScanConfig(metric="label:operation=multiplication", site=f"sae:{saved}"),
    select=sklens.SelectConfig(top_k=3), confirm=sklens.ConfirmConfig(n_confirm=16),
)
summary = sklens.run_study(config, saved.parent / "sae-run", progress=False)
summary["held_out"]
