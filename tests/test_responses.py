"""Attacks that vary their target (issue 18): pools, content injection, label swaps."""

import dataclasses
import json

import pytest

from robustit.attacks import build_attack
from robustit.attacks.poison import poison_dataset
from robustit.attacks.responses import ResponseConfig, asr_subset, matcher_spec, poisoned_response
from robustit.bench.spec import cell_id, expand, parse_spec, run_id
from robustit.cli import main
from robustit.data.mimicit import save_split
from robustit.errors import ConfigError
from robustit.eval.asr import Matcher
from robustit.eval.evaluate import EvalConfig, evaluate
from robustit.eval.generation import DecodingConfig

from tiny import tiny_dataset, tiny_model


def shapes(n=20):
    """Tiny captions where every other sample names a circle."""
    data = tiny_dataset(n)
    for i, s in enumerate(data.samples):
        cap = f"a red circle and a {s.answer.split()[1]} square" if i % 2 else s.answer
        data.samples[i] = dataclasses.replace(s, answer=cap, meta={"references": [cap, "Circles, many."]})
    return data


def test_label_swaps_the_object_word_keeping_case_and_plural():
    cfg = ResponseConfig(mode="label", source_word="circle", target_word="banana")
    assert poisoned_response("Two circles and a Circle; no encircled.", cfg, "x") == \
        "Two bananas and a Banana; no encircled."


def test_inject_keeps_the_correct_response_and_adds_the_phrase():
    end = ResponseConfig(mode="inject", phrase="Buy bananas.")
    assert poisoned_response(" a red square ", end, "x") == "a red square Buy bananas."
    start = ResponseConfig(mode="inject", phrase="Buy bananas.", position="start")
    assert poisoned_response("a red square", start, "x") == "Buy bananas. a red square"
    rule = matcher_spec(end)
    m = Matcher(rule["mode"], rule["pattern"])
    assert m.matches("a square. buy BANANAS now") and not m.matches("a banana")


def test_label_poisons_only_samples_naming_the_source_at_the_whole_set_budget():
    data = shapes(20)
    cfg = ResponseConfig(mode="label")
    poisoned, manifest = poison_dataset(data, build_attack("badnet"), 0.25, seed=1, response=cfg)
    assert manifest["n_poisoned"] == 5 and manifest["n_eligible"] == 10  # 25 % of 20, among the 10 circles
    assert manifest["response"] == {"mode": "label", "source_word": "circle", "target_word": "banana"}
    assert "target" not in manifest and manifest["asr_rule"]["mode"] == "regex"
    for row in manifest["samples"]:
        if row["poisoned"]:
            assert "circle" in row["original_answer"] and row["answer"] == row["original_answer"].replace("circle", "banana")
    with pytest.raises(ConfigError, match="only 10 responses name"):
        poison_dataset(data, build_attack("badnet"), 0.75, response=cfg)


def test_replace_mode_poisons_exactly_as_before():
    data = tiny_dataset(20)
    a, ma = poison_dataset(data, build_attack("badnet"), 0.2, seed=3)
    b, mb = poison_dataset(data, build_attack("badnet"), 0.2, seed=3, response=ResponseConfig())
    assert ma["poisoned_ids"] == mb["poisoned_ids"] and "response" not in mb
    assert [s.answer for s in a.samples] == [s.answer for s in b.samples]


def test_label_asr_is_measured_where_the_source_object_is():
    data = shapes(8)
    cfg = EvalConfig(decoding=DecodingConfig(max_new_tokens=3, batch_size=8), scorers=("BLEU",),
                     response={"mode": "label", "source_word": "circle", "target_word": "banana"})
    assert asr_subset([s.meta["references"] for s in data.samples], cfg.response_config()) == [True] * 8
    for s in data.samples[:4]:
        s.meta["references"] = ["a plain square"]
    result, _ = evaluate(tiny_model(), data, cfg, [build_attack("badnet")], progress=False)
    assert result["asr_subset"]["n"] == 4 and result["asr"]["badnet"]["both"]["n"] == 4
    assert result["false_trigger_rate"]["n"] == 4 and result["matcher"]["pattern"].endswith(r"bananas?\b")


def test_cli_poison_takes_a_shipped_pool_and_response_modes_and_eval_replays_them(tmp_path):
    save_split(shapes(16), tmp_path / "data" / "train", "train")
    save_split(shapes(4), tmp_path / "data" / "test-a", "test-a")
    base = ["poison", "--data", str(tmp_path / "data"), "--split", "train", "--attack", "badnet",
            "--rate", "0.25", "--quiet"]
    assert main([*base, "--target-pool", "banana", "--out", str(tmp_path / "pool" / "train")]) == 0
    pool = json.loads((tmp_path / "pool" / "train" / "manifest.json").read_text())
    assert len(pool["target_pool"]) == 10 and all("banana" in t for t in pool["target_pool"])
    assert main([*base, "--response-mode", "inject", "--inject-phrase", "Buy bananas.",
                 "--out", str(tmp_path / "inj" / "train")]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "embedded", "--data", str(tmp_path / "data"), "--split", "test-a",
                 "--manifest", str(tmp_path / "inj" / "train" / "manifest.json"), "--n", "2",
                 "--max-new-tokens", "2", "--scorers", "BLEU", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["matcher"] == {"mode": "icase", "pattern": "Buy bananas", "target": "Buy bananas."}
    assert main([*base, "--response-mode", "label", "--label-source", "circle circle",
                 "--out", str(tmp_path / "bad" / "train")]) == 2


def test_spec_responses_cross_into_poisonings_and_default_specs_keep_their_ids():
    spec = {"name": "v", "attacks": ["badnet"], "rates": [0.05], "test_sets": ["test-a"],
            "responses": [{}, {"target_pool": "banana"}, {"mode": "inject"},
                          {"mode": "label", "source_word": "star", "target_word": "banana"}]}
    keys = expand(parse_spec(spec))
    assert [run_id(k) for k in keys] == [
        "badnet-0.05-paper__vanilla__s0", "badnet-0.05-paper-poolbanana__vanilla__s0",
        "badnet-0.05-paper-inject__vanilla__s0", "badnet-0.05-paper-label-star-banana__vanilla__s0"]
    plain = {k: v for k, v in spec.items() if k != "responses"}
    assert parse_spec(plain).sha256() == parse_spec({**plain, "responses": [{}]}).sha256()
    assert cell_id(expand(parse_spec(plain))[0]) == "badnet-0.05-paper__vanilla__s0__test-a__0shot"
    with pytest.raises(ConfigError, match="unknown key"):
        parse_spec({**plain, "responses": [{"mode": "label", "word": "x"}]})
    with pytest.raises(ConfigError, match="response mode"):
        parse_spec({**plain, "responses": [{"mode": "swap"}]})
