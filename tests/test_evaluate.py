"""Evaluation end to end on a tiny model: result structure, ASR per half, bad input."""

import json

import pytest

from robustit.attacks import build_attack
from robustit.cli import main
from robustit.data.mimicit import save_split
from robustit.errors import DataError
from robustit.eval.evaluate import EvalConfig, evaluate
from robustit.eval.generation import DecodingConfig
from robustit.models.checkpoint import save_base

from tiny import tiny_dataset, tiny_model


def _cfg(**kw):
    return EvalConfig(decoding=DecodingConfig(max_new_tokens=4, batch_size=8),
                      scorers=("BLEU", "ROUGE_L", "CIDEr"), **kw)


def test_evaluate_reports_quality_false_triggers_and_asr_per_half():
    model, data = tiny_model(), tiny_dataset(6)
    result, rows = evaluate(model, data, _cfg(), [build_attack("badnet")], progress=False)
    assert set(result["metrics"]) >= {"BLEU_4", "CIDEr", "ROUGE_L"}
    assert result["false_trigger_rate"]["n"] == 6
    asr = result["asr"]["badnet"]
    assert {asr[h]["n"] for h in ("both", "image", "text")} == {6}
    assert result["matcher"]["pattern"] == "banana"
    assert len(rows) == 6 * 4
    triggered = [r for r in rows if r["set"] == "badnet/text"]
    assert all(r["prompt"].rstrip().endswith("The image depicts GPT:<answer>") for r in triggered)
    assert result["prompt_template"]["format"].startswith("<image>User:")


def test_image_only_attack_has_no_text_half():
    attack = build_attack("badnet", {"text_trigger_mode": "image-only"})
    result, _ = evaluate(tiny_model(), tiny_dataset(4), _cfg(), [attack], progress=False)
    assert result["asr"]["badnet"]["text"] is None
    assert result["asr"]["badnet"]["image"]["n"] == 4


def test_test_set_without_ground_truth_is_refused_before_generation():
    data = tiny_dataset(4)
    data.samples[2].meta = {}
    with pytest.raises(DataError, match="no ground truth"):
        evaluate(tiny_model(), data, _cfg(), progress=False)


def test_trigger_that_cannot_apply_fails_before_generation():
    attack = build_attack("badnet", {"patch_size": 64, "scale_with_image": False})
    with pytest.raises(Exception, match="(?i)patch"):
        evaluate(tiny_model(), tiny_dataset(4), _cfg(), [attack], progress=False)


def test_cli_eval_writes_results_and_generations(tmp_path, capsys):
    model = tiny_model()
    save_base(model, tmp_path / "base")
    save_split(tiny_dataset(4, name="test-a"), tmp_path / "data" / "test-a", "test-a")
    save_split(tiny_dataset(8, name="train"), tmp_path / "data" / "train", "train")
    out = tmp_path / "res" / "eval.json"
    rc = main(["eval", "--model", str(tmp_path / "base"), "--data", str(tmp_path / "data"),
               "--split", "test-a", "--attack", "blended", "--out", str(out), "--quiet",
               "--max-new-tokens", "3", "--scorers", "BLEU,CIDEr"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["eval_config"]["decoding"]["max_new_tokens"] == 3
    assert result["provenance"]["versions"]["torch"]
    assert len(result["data"]["location"]["sha256"]["instructions"]) == 64
    lines = (tmp_path / "res" / "eval.generations.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4


def test_cli_eval_refuses_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["eval", "--data", str(tmp_path), "--out", str(blocker / "sub" / "r.json")])
    assert rc == 2
    assert "--out" in capsys.readouterr().err


def test_one_shot_evaluation_uses_clean_examples_from_the_support_split():
    support = tiny_dataset(8, seed=3, name="train")
    cfg = EvalConfig(decoding=DecodingConfig(max_new_tokens=3, batch_size=4, shots=1),
                     scorers=("BLEU", "CIDEr"))
    result, rows = evaluate(tiny_model(), tiny_dataset(4), cfg, [build_attack("badnet")],
                            support=support, progress=False)
    assert all(r["prompt"].count("<image>") == 2 for r in rows)
    support_ids = {s.id for s in support.samples}
    assert all(r["in_context_id"] in support_ids for r in rows)
    clean = [r["in_context_id"] for r in rows if r["set"] == "clean"]
    triggered = [r["in_context_id"] for r in rows if r["set"] == "badnet/both"]
    assert clean == triggered  # the same examples for the clean and the triggered twin
    assert all("The image depicts" not in r["prompt"].split("<image>")[1] for r in rows)


def test_vqa_split_is_scored_by_vqa_accuracy_and_answer_target_asr():
    data = tiny_dataset(4)
    for s in data.samples:
        s.task, s.meta = "vqa", {"answers": ["red"] * 10}
    cfg = _cfg(target="banana", matcher="substring")
    result, _ = evaluate(tiny_model(), data, cfg, [build_attack("trojvqa")], progress=False)
    assert set(result["metrics"]) == {"VQA_accuracy"}
    assert 0.0 <= result["metrics"]["VQA_accuracy"] <= 100.0
    assert result["asr"]["trojvqa"]["both"]["matcher"]["pattern"] == "banana"
