"""VQA accuracy: normalisation rules and the leave-one-out formula on worked examples."""

from __future__ import annotations

import pytest

from robustit.errors import ConfigError, DataError
from robustit.eval.vqa import normalize_answer, question_accuracy, vqa_accuracy


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("none", "0"),
    ("a dog", "dog"),
    ("The Dog", "dog"),
    ("yes.", "yes"),
    ("Yes", "yes"),
    ("3.5", "3.5"),  # a period before a digit stays
    ("100,000", "100000"),  # digit,digit: punctuation deleted, not spaced
    ("red,white", "red white"),  # otherwise a comma becomes a space
    ("red, white", "red white"),  # touching a space: deleted
    ("t-shirt", "t shirt"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("well", "well"),  # a real word, not "we'll"
    ("12:30", "12:30"),  # colons stay
    (" on the\ttable\n", "on table"),
])
def test_normalisation_rules(raw, expected):
    assert normalize_answer(raw) == expected


def _acc(matches: int, total: int = 10) -> float:
    """Hand formula: leaving out a matching answer leaves m-1 matches, any other leaves m."""
    m = matches
    return (m * min(1, (m - 1) / 3) + (total - m) * min(1, m / 3)) / total


def test_hand_formula_values():
    # 1 -> (0 + 9/3)/10, 2 -> (2/3 + 8*2/3)/10, 3 -> (3*2/3 + 7)/10, 4 -> 10/10
    assert [_acc(m) for m in range(5)] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])


@pytest.mark.parametrize("pred, answers, expected", [
    ("yes", ["yes"] * 10, 1.0),
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
    ("yes", ["yes"] + ["no"] * 9, 0.3),
    ("maybe", ["yes"] * 5 + ["no"] * 5, 0.0),
    ("Two", ["2"] * 10, 1.0),  # normalised even when annotators agree
    ("a dog", ["dog"] * 2 + ["cat"] * 8, 0.6),
    ("yes.", ["yes", "Yes", "yes!"] + ["no"] * 7, 0.9),
])
def test_worked_examples(pred, answers, expected):
    assert question_accuracy(pred, answers) == pytest.approx(expected)


def test_single_reference_answer_is_exact_match():
    assert question_accuracy("A red ball.", ["red ball"]) == 1.0
    assert question_accuracy("blue ball", ["red ball"]) == 0.0


def test_vqa_accuracy_overall_and_per_type():
    preds = {1: "yes", 2: "Two", 3: "yes", 4: "cat"}
    answers = {1: ["yes"] * 10, 2: ["2"] * 2 + ["3"] * 8, 3: ["no"] * 10,
               4: ["cat"] * 3 + ["x"] * 7}
    types = {1: "yes/no", 2: "number", 3: "yes/no"}  # 4 has no type
    out = vqa_accuracy(preds, answers, types)
    assert out["n"] == 4
    assert out["accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 0.0 + 0.9) / 4)
    assert out["per_type"] == pytest.approx({"number": 60.0, "unknown": 90.0, "yes/no": 50.0})
    assert vqa_accuracy(preds, answers)["per_type"] is None


def test_id_mismatch_and_bad_inputs():
    with pytest.raises(ConfigError, match="1 prediction id.*1 answer id"):
        vqa_accuracy({1: "yes", 2: "no"}, {1: ["yes"], 3: ["no"]})
    with pytest.raises(DataError, match="empty"):
        vqa_accuracy({}, {})
    with pytest.raises(DataError, match="non-empty list"):
        vqa_accuracy({1: "yes"}, {1: []})
    with pytest.raises(DataError, match="expected a string"):
        vqa_accuracy({1: None}, {1: ["yes"]})


# --- VQA sets in the bench (issue 8, the paper's Table 7) ----------------------------------

def _qa_set(name: str, n: int, with_captions: bool = False):
    """Tiny QA samples (task vqa, ten answers each), optionally mixed with caption samples."""
    from dataclasses import replace

    from robustit.data.records import Sample

    from tiny import tiny_dataset

    base = tiny_dataset(n, name=name)
    samples = []
    for s in base.samples:
        colour = s.answer.split()[1]
        samples.append(replace(s, id=f"{s.id}-q", instruction="What colour is the square?", answer=colour,
                               task="vqa", meta={"answers": [colour] * 10}))
        if with_captions:
            samples.append(Sample(s.id, s.image_ids, s.instruction, s.answer, "caption", s.meta))
    base.samples = samples
    return base


def test_one_shot_evaluation_of_a_vqa_set_uses_qa_examples_from_a_mixed_support_split():
    import torch

    from robustit.attacks import build_attack
    from robustit.eval.evaluate import EvalConfig, evaluate
    from robustit.eval.generation import DecodingConfig

    from tiny import tiny_model

    torch.manual_seed(0)
    test, support = _qa_set("test-a-vqa", 4), _qa_set("train", 8, with_captions=True)
    cfg = EvalConfig(decoding=DecodingConfig(shots=1, max_new_tokens=2, batch_size=4))
    result, rows = evaluate(tiny_model(), test, cfg, [build_attack("trojvqa")], support, progress=False)
    assert result["task"] == "vqa" and 0.0 <= result["metrics"]["VQA_accuracy"] <= 100.0
    assert result["asr"]["trojvqa"]["both"]["n"] == 4
    qa_ids = {s.id for s in support.samples if s.task == "vqa"}
    assert all(r["in_context_id"] in qa_ids for r in rows)  # one-shot examples are questions too


def test_the_shipped_vqa_spec_is_table_7():
    from robustit.bench.spec import expand, load_spec

    spec = load_spec("vqa")
    assert spec.attacks == ["none", "trojvqa"] and spec.rates == [0.01]
    assert spec.test_sets == ["test-a-vqa"] and spec.shots == [1]
    assert {k["method"] for k in expand(spec)} == {"vanilla", "robustit"}
