"""The causal split balanced over the task's groups."""

from __future__ import annotations

from collections import Counter

import sklens
from sklens.app.tasks import balanced, load_task


def _pool(counts: dict[str, int]) -> list[sklens.Example]:
    out = []
    for group, n in counts.items():
        out += [sklens.Example(f"{group} {i}?", " x", {"g": group}) for i in range(n)]
    return out[::3] + out[1::3] + out[2::3]  # interleaved, not sorted by group


def test_balanced_takes_each_group_in_turn_and_keeps_the_rest_in_order():
    pool = _pool({"a": 90, "b": 10, "c": 4})
    taken, rest = balanced(pool, 20, "g")
    assert Counter(e.meta["g"] for e in taken) == {"a": 8, "b": 8, "c": 4}
    assert [e for e in pool if e not in taken] == rest and len(taken) + len(rest) == len(pool)
    firsts = {g: [e for e in pool if e.meta["g"] == g] for g in "abc"}
    assert all(e in firsts[e.meta["g"]][:8] for e in taken)  # each group's first ones
    taken, _ = balanced(pool, 40, "g")
    assert Counter(e.meta["g"] for e in taken) == {"a": 26, "b": 10, "c": 4}


def test_a_stratified_causal_split_stays_disjoint_from_the_others():
    kw = dict(n_train=40, n_val=30, seed=1, n_confirm=20, n_causal=24)
    plain = load_task("hans", **kw)
    strat = load_task("hans", **kw, stratify_causal=True)
    assert (plain.train, plain.val, plain.confirm) == (strat.train, strat.val, strat.confirm)
    counts = Counter(e.meta["heuristic"] for e in strat.causal)
    assert max(counts.values()) - min(counts.values()) <= 1 and len(strat.causal) == 24
    others = {e.instruction for e in (*strat.train, *strat.val, *strat.confirm, *strat.rest)}
    assert not others & {e.instruction for e in strat.causal}
