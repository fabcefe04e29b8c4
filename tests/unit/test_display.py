"""Views keep every character the user wrote, and draw it as written.

Cases 106 (U+FFFD for characters split across byte-level tokens, a raw U+202E reversing the
terminal table) and 70 (a ``$`` in a group name breaking matplotlib) of the reliability probe of
issue 12.
"""

from __future__ import annotations

import io

import pandas as pd

import sklens
from sklens.app.printed import format_table
from sklens.display import token_texts, visible
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics
from sklens.scanning.activations import token_activations
from sklens.views import figures

TEXT = "Grüße, Straße ö 😀👩‍👩‍👧 مرحبا עברית"


def test_case_106_views_keep_every_character(qwen, examples):
    ids = qwen.tokenizer.encode(TEXT, add_special_tokens=False)
    one_by_one = [qwen.tokenizer.decode([t]) for t in ids]
    assert any("\ufffd" in t for t in one_by_one)  # the byte-level tokenizer does split them
    texts = token_texts(qwen.tokenizer.decode, ids)
    assert len(texts) == len(ids) and "".join(texts) == TEXT and "\ufffd" not in "".join(texts)

    prompt = SoftPrompt.init_for(qwen, 3)
    example = sklens.Example(f"Say: {TEXT}", " ok")
    ((tokens, acts),) = token_activations(qwen, prompt, [example], [(0, 1)])
    shown = "".join(t for t in tokens if not t.startswith("<soft"))
    assert TEXT in shown and "\ufffd" not in shown and len(tokens) == acts.shape[0]


def _table_of_one_unit(run, instruction: str) -> str:
    """``format_table`` of a run whose one unit's extremal examples both read ``instruction``."""
    neurons = [{"layer": 0, "unit": 1, "slot": 0, "score": 0.5}]
    pd.DataFrame(neurons).to_csv(run / "neurons.csv", index=False)
    rows = [
        {"unit_rank": 0, "rank": 0, "direction": d, "instruction": instruction, "completion": "x"}
        for d in ("most", "least")
    ]
    pd.DataFrame(rows).to_csv(run / "examples.csv", index=False)
    return format_table(run)


def test_case_106_terminal_table_shows_bidi_controls(tmp_path):
    table = _table_of_one_unit(tmp_path, "abc\u202edef")
    assert "\u202e" not in table and "abc<U+202E>def" in table
    header, most, least = table.splitlines()
    assert header.split()[:5] == ["#", "unit", "slot", "score", "held-out"] and "L0 N1" in most
    assert most.split()[4:6] == ["0.500", "-"]  # no heldout.csv: no held-out r made up
    assert most.index("+ abc") == least.index("- abc")  # the two examples line up
    assert visible("a\u2066b\u200fc") == "a<U+2066>b<U+200F>c"


def test_case_70_dollar_signs_in_group_names_render(qwen, examples):
    fig = figures.kde_by_group(
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], ["$\\foo$"] * 3 + ["b"] * 3, title="$x"
    )
    fig.savefig(io.BytesIO(), format="png")  # mathtext would raise ParseFatalException here
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["\\$\\foo\\$ (n=3)", "b (n=3)"]  # escaped, so drawn as typed
    prompt = SoftPrompt.init_for(qwen, 2)
    values = metrics.values([float(e.meta["a"]) for e in examples], name="$\\foo$")
    result = sklens.scan(qwen, prompt, examples, values, progress=False)
    hist = figures.score_histogram(result, k=3)
    hist.savefig(io.BytesIO(), format="png")


def test_views_drop_position_zero_only_when_it_is_a_measured_sink():
    """A model with no BOS has its first word at position 0, at the others' scale: the view keeps
    it. A sink (≥ SINK_RATIO times the rest, as SmolLM2's BOS at |a| ≈ 3000) is left out."""
    import numpy as np

    from sklens.views import viz

    words = ["The", " cat", " sat"]
    plain = np.array([[0.5, -1.0], [0.8, 0.2], [-0.3, 1.1]])
    sink = plain.copy()
    sink[0] = [3000.0, -2500.0]
    assert not viz.is_sink(plain) and viz.is_sink(sink)
    kept = str(viz.text_view([words], [plain], ["L0 N0", "L0 N1"]))
    dropped = str(viz.text_view([["<s>", *words[1:]]], [sink], ["L0 N0", "L0 N1"]))
    assert '"The"' in kept and '"<s>"' not in dropped and '"&lt;s&gt;"' not in dropped


def test_figures_display_in_a_notebook_without_matplotlib_inline():
    """IPython with no inline backend: the figure still formats as a PNG (review ecosystem.md)."""
    from IPython.core.interactiveshell import InteractiveShell

    fig = figures.kde_by_group([0.1, 0.5, 0.9, 1.2], ["a", "a", "b", "b"])
    data, _ = InteractiveShell.instance().display_formatter.format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_case_I14_terminal_control_codes_are_spelled_out(tmp_path):
    """ESC sequences (clear screen, window title, colour), BEL, BS and NUL in task text reach the
    terminal as ``<U+001B>``..., never raw."""
    codes = "\x1b[2J\x1b]0;pwned\x07\x1b[31m\x08\x00\x7f"
    table = _table_of_one_unit(tmp_path, f"a{codes}b")
    assert not any(c in table for c in codes if ord(c) < 32 or ord(c) == 0x7F)
    assert "a<U+001B>[2J<U+001B>]0;pwned<U+0007><U+001B>[31m<U+0008>" in table  # then cut
    assert visible("\x00\x7fb") == "<U+0000><U+007F>b"
    assert visible("tab\tkept") == "tab\tkept"


def test_score_histogram_marks_the_top_k_threshold_and_the_nulls_max_quantile():
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 2, 3, 20, generator=g, dtype=torch.float64)
    values = torch.randn(40, generator=g, dtype=torch.float64)
    result = sklens.scan_activations(acts, values, n_permutations=99)
    lines = {
        line.get_label(): line.get_xdata()[0]
        for line in figures.score_histogram(result, k=4).axes[0].get_lines()
        if not line.get_label().startswith("_")
    }
    score = result.scores("max")[0].abs().flatten().numpy()
    max_95 = np.quantile(result.null.max_null("max").numpy(), 0.95)  # independent of the view
    assert lines[f"top-4 threshold |score| = {np.sort(score)[-4]:.2f}"] == np.sort(score)[-4]
    assert lines[f"null's max |score|, 95% = {max_95:.2f}"] == max_95
