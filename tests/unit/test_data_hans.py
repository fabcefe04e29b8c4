"""HANS: McCoy et al.'s format, the generator's heuristics and labels, bad files."""

from __future__ import annotations

import re

import pytest

from sklens.data.hans import HEURISTICS, generate_hans, load_hans

HANS_HEADER = (
    "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tpairID\theuristic\tsubcase\ttemplate\n"
)


def test_hans_official_format(tmp_path):
    path = tmp_path / "heuristics_evaluation_set.txt"
    path.write_text(
        HANS_HEADER + "non-entailment\t-\t-\t-\t-\tThe doctor saw the lawyer .\tThe lawyer saw the "
        "doctor .\tex0\tlexical_overlap\tln_subject/object_swap\ttemp1\n"
        + "entailment\t-\t-\t-\t-\tSince the judge slept , the actor ran .\tThe judge "
        "slept .\tex1\tconstituent\tce_embedded_under_since\ttemp2\n"
    )
    examples = load_hans(path)
    assert [e.completion for e in examples] == ["non-entailment", "entailment"]
    assert examples[0].meta == {
        "heuristic": "lexical_overlap",
        "subcase": "ln_subject/object_swap",
        "label": "non-entailment",
        "template": "temp1",
        "pair_id": "ex0",
        "choices": ["entailment", "non-entailment"],  # so that accuracy can be measured
        "answer": "non-entailment",
    }
    assert "Premise: The doctor saw the lawyer ." in examples[0].instruction
    path.write_text(HANS_HEADER + "maybe\t-\t-\t-\t-\ta\tb\tex\tlexical_overlap\tx\tt\n")
    with pytest.raises(ValueError, match=r"heuristics_evaluation_set.txt:2: gold_label 'maybe'"):
        load_hans(path)
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a HANS file"):
        load_hans(path)


def test_hans_truncated_line_names_file_and_line(tmp_path):
    path = tmp_path / "heuristics_evaluation_set.txt"
    good = (
        "entailment\t-\t-\t-\t-\tSince the judge slept , the actor ran .\tThe judge "
        "slept .\tex1\tconstituent\tce_embedded_under_since\ttemp2\n"
    )
    path.write_text(HANS_HEADER + good + "\n" + good + "non-entailment\t-\t-\t-\t-\tThe doctor")
    with pytest.raises(
        ValueError,
        match=r"heuristics_evaluation_set.txt:5: 6 tab-separated fields, the header has 11",
    ):
        load_hans(path)
    path.write_text(HANS_HEADER + good.replace("\tex1", "\tex\t1"))
    with pytest.raises(ValueError, match=r"txt:2: 12 tab-separated fields"):
        load_hans(path)
    path.write_text(HANS_HEADER + good.replace("The judge slept .", ""))
    with pytest.raises(ValueError, match=r"txt:2: empty field\(s\) \['sentence2'\]"):
        load_hans(path)
    # a quote is text, not the start of a quoted field running over the next lines
    path.write_text(HANS_HEADER + good.replace("The judge", '"The judge') + good)
    assert [e.meta["pair_id"] for e in load_hans(path)] == ["ex1", "ex1"]
    # a file in another encoding: an error naming the file and line, not a codec traceback
    path.write_bytes((HANS_HEADER + good + good.replace("judge", "juge été")).encode("latin-1"))
    with pytest.raises(ValueError, match=r"txt:3: not UTF-8 text \(byte 0xe9\)"):
        load_hans(path)


def test_hans_generator_covers_every_heuristic_and_label():
    examples = generate_hans(240, seed=0)
    cells = {(e.meta["heuristic"], e.meta["label"]) for e in examples}
    assert cells == {(h, lab) for h in HEURISTICS for lab in ("entailment", "non-entailment")}
    assert len({e.meta["subcase"] for e in examples}) == 12
    assert all(e.completion == e.meta["label"] for e in examples)
    assert [e.instruction for e in generate_hans(30, seed=3)] == [
        e.instruction for e in generate_hans(30, seed=3)
    ]


# McCoy et al.'s labels: the n subcases are non-entailed, the e subcases entailed.
HANS_LABELS = {
    "ln_subject/object_swap": "non-entailment",
    "ln_preposition": "non-entailment",
    "le_passive": "entailment",
    "le_conjunction": "entailment",
    "sn_NP/S": "non-entailment",
    "sn_PP_on_subject": "non-entailment",
    "se_PP_on_obj": "entailment",
    "se_relative_clause_on_obj": "entailment",
    "cn_embedded_under_if": "non-entailment",
    "cn_disjunction": "non-entailment",
    "ce_embedded_under_since": "entailment",
    "ce_adverb": "entailment",
}
# Words that open a clause, and whether the clause they open is asserted (factive) or not.
OPENERS_ASSERTED = ("since", "because", "now that", "certainly", "clearly", "obviously")
OPENERS_NOT_ASSERTED = ("if", "unless", "whether or not", "or")


def _premise_hypothesis(example):
    premise, hypothesis = example.instruction.splitlines()[:2]
    return premise.split(": ", 1)[1], hypothesis.split(": ", 1)[1]


def _words(sentence):
    return re.findall(r"[a-z]+", sentence.lower())


def _contiguous(part, whole):
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def _clauses(sentence):
    """{clause words: opener} for the premise's clauses that are complete constituents.

    The sentence is cut at commas and the final period. A piece is a constituent clause when it
    begins the sentence or begins with a clause opener (the opener is removed); a piece after a
    comma without an opener (the main clause after "If ...,") is not: there the subject and verb
    hang off the sentence node, not off a node of their own.
    """
    out = {}
    for i, piece in enumerate(re.split(r"[,.]", sentence.lower())):
        words = _words(piece)
        for opener in OPENERS_ASSERTED + OPENERS_NOT_ASSERTED:
            if words[: len(opener.split())] == opener.split():
                out[tuple(words[len(opener.split()) :])] = opener
                break
        else:
            if i == 0 and words:
                out[tuple(words)] = None
    return out


def _events(sentence):
    """(agent, verb, patient) triples a transitive lexical-overlap sentence asserts."""
    s = sentence.lower()
    prep = r"(?:near|behind|beside|next to|in front of)"
    if m := re.fullmatch(r"the (\w+) was (\w+) by the (\w+)\.", s):
        return {(m[3], m[2], m[1])}
    if m := re.fullmatch(r"the (\w+) and the (\w+) (\w+) the (\w+)\.", s):
        return {(m[1], m[3], m[4]), (m[2], m[3], m[4])}
    if m := re.fullmatch(r"the (\w+) (\w+) the (\w+) and the (\w+)\.", s):
        return {(m[1], m[2], m[3]), (m[1], m[2], m[4])}
    if m := re.fullmatch(rf"the (\w+) {prep} the (\w+) (\w+) the (\w+)\.", s):
        return {(m[1], m[3], m[4])}
    if m := re.fullmatch(r"the (\w+) (\w+) the (\w+)\.", s):
        return {(m[1], m[2], m[3])}
    raise AssertionError(f"unexpected lexical-overlap sentence {sentence!r}")


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_hans_pairs_follow_mccoy_heuristics(seed):
    counts = {}
    for e in generate_hans(1200, seed=seed):
        premise, hypothesis = _premise_hypothesis(e)
        p, h = _words(premise), _words(hypothesis)
        subcase, heuristic = e.meta["subcase"], e.meta["heuristic"]
        assert e.meta["label"] == HANS_LABELS[subcase] == e.completion
        assert set(h) <= set(p), (premise, hypothesis)  # every heuristic overlaps fully
        clauses = _clauses(premise)
        if heuristic == "lexical_overlap":
            assert not _contiguous(h, p), (premise, hypothesis)
            # entailed exactly when the premise asserts the hypothesis's event
            (event,) = _events(hypothesis)
            assert (event in _events(premise)) == (e.meta["label"] == "entailment")
        elif heuristic == "subsequence":
            assert _contiguous(h, p) and len(h) < len(p), (premise, hypothesis)
            assert tuple(h) not in clauses, (premise, hypothesis)
        else:
            assert heuristic == "constituent"
            assert _contiguous(h, p) and len(h) < len(p), (premise, hypothesis)
            # a complete clause of the premise, entailed exactly when its opener asserts it
            assert tuple(h) in clauses, (premise, hypothesis)
            asserted = clauses[tuple(h)] in OPENERS_ASSERTED
            assert asserted == (e.meta["label"] == "entailment"), (premise, hypothesis)
        counts[heuristic] = counts.get(heuristic, 0) + 1
    assert counts == dict.fromkeys(HEURISTICS, 400)


def test_hans_varies_templates_within_subcases():
    templates = {}
    for e in generate_hans(1200, seed=0):
        templates.setdefault(e.meta["subcase"], set()).add(e.meta["template"])
    assert len(templates["ln_preposition"]) == 3  # HANS temp2-4
    assert len(templates["le_conjunction"]) == 2  # HANS temp32-33
    assert len(templates["cn_disjunction"]) == 2
