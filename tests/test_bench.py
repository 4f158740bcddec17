"""robustit bench: spec expansion, bad specs, shards, skip-and-resume, one real tiny grid."""

import json
from pathlib import Path

import pytest

from robustit.bench.runner import Bench
from robustit.bench.schema import load_results
from robustit.bench.spec import (cell_id, expand, load_spec, parse_shard, parse_spec, run_id,
                                 shard_keys)
from robustit.cli import main
from robustit.data.mimicit import save_split
from robustit.errors import ConfigError, RobustITError
from robustit.models.checkpoint import save_base

from tiny import tiny_dataset, tiny_model

GRID = {"name": "t", "attacks": ["none", "blended", "badnet"], "rates": [0.01, 0.05],
        "methods": ["vanilla", {"name": "robustit", "params": {"components": "both"}}],
        "test_sets": ["test-a", "test-b"], "shots": [0, 1], "seeds": [0, 1]}


def test_expansion_is_the_product_with_one_clean_poisoning():
    keys = expand(parse_spec(GRID))
    # (none + 2 attacks x 2 rates) x 2 methods x 2 test sets x 2 shots x 2 seeds
    assert len(keys) == (1 + 2 * 2) * 2 * 2 * 2 * 2
    assert len({cell_id(k) for k in keys}) == len(keys)
    clean = [k for k in keys if k["attack"] == "none"]
    assert {k["rate"] for k in clean} == {0.0}
    # cells of one training run are adjacent, so a run is trained once and then evaluated
    runs = [run_id(k) for k in keys]
    assert runs == sorted(runs, key=runs.index)


def test_sweep_crosses_only_into_the_named_methods():
    spec = parse_spec({"name": "s", "methods": ["vanilla", {"name": "robustit", "label": "grid"},
                                                {"name": "robustit", "params": {"beta": 0.0}}],
                       "sweep": {"alpha": [1, 2], "gamma": [0.3, 0.5]}, "sweep_methods": ["grid"],
                       "test_sets": ["test-a"]})
    params = [k["params"] for k in expand(spec)]
    assert params.count({}) == 1
    assert {"beta": 0.0} in params
    assert sorted((p["alpha"], p["gamma"]) for p in params if "alpha" in p) == [
        (1, 0.3), (1, 0.5), (2, 0.3), (2, 0.5)]


@pytest.mark.parametrize("bad, words", [
    ({"attacks": ["blended", "nope"]}, ["unknown attack 'nope'", "badnet"]),
    ({"methods": ["vanila"]}, ["unknown method 'vanila'", "vanilla"]),
    ({"colour": 1}, ["unknown key(s) ['colour']", "attacks"]),
    ({"rates": [0]}, ["outside (0, 1]"]),
    ({"text_trigger_modes": ["both"]}, ["image-only"]),
    ({"methods": [{"name": "robustit", "params": {"gama": 0.5}}]}, ["gama", "gamma"]),
    ({"train": {"lr": 1e-3, "momentum": 0.9}}, ["momentum", "lr"]),
])
def test_bad_specs_name_the_problem_and_the_valid_choices(bad, words):
    with pytest.raises(ConfigError) as err:
        parse_spec({"name": "x", **bad})
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("text", ["3/2", "0/2", "1", "a/b"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_shards_partition_the_grid_without_splitting_a_run():
    keys = expand(parse_spec(GRID))
    slices = [shard_keys(keys, (i, 3)) for i in (1, 2, 3)]
    ids = [cell_id(k) for s in slices for k in s]
    assert sorted(ids) == sorted(cell_id(k) for k in keys)
    owners = {}
    for i, s in enumerate(slices):
        for k in s:
            assert owners.setdefault(run_id(k), i) == i


def test_every_shipped_spec_parses():
    from robustit.bench.spec import SHIPPED

    names = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
    assert {"quick", "paper", "ablation", "sweep", "attacks", "adaptive", "vqa", "baselines"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.name == name and expand(spec)


def test_list_specs_names_each_shipped_spec_with_its_size_and_spec_is_required_otherwise(capsys):
    from robustit.bench.spec import SHIPPED, run_id
    from robustit.cli import main

    assert main(["bench", "--list-specs"]) == 0
    lines = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()[1:-1]}
    for path in SHIPPED.glob("*.yaml"):
        keys = expand(load_spec(path.stem))
        assert lines[path.stem] == [str(len(keys)), str(len({run_id(k) for k in keys}))]
    assert main(["bench", "--out", "unused"]) == 2
    assert "--spec is required" in capsys.readouterr().err


class FakeVerbs:
    """Stands in for the CLI: writes each verb's output, records calls, can fail on call N."""

    def __init__(self, fail_at: int | None = None, interrupt: bool = False):
        self.calls, self.fail_at, self.interrupt = [], fail_at, interrupt

    def __call__(self, argv):
        self.calls.append(argv[0])
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            if self.interrupt:
                raise KeyboardInterrupt
            return 1
        out = Path(argv[argv.index("--out") + 1])
        if argv[0] == "poison":
            out.mkdir(parents=True, exist_ok=True)
            (out / "manifest.json").write_text("{}")
        elif argv[0] == "train":
            (out / "checkpoint").mkdir(parents=True, exist_ok=True)
            (out / "checkpoint" / "tuned.json").write_text("{}")
            (out / "train.json").write_text(json.dumps({"wall_seconds": 1.0, "data": {"n_samples": 8}}))
        elif argv[0] == "eval":
            out.write_text(json.dumps({"metrics": {"CIDEr": 50.0}}))
        return 0


def _bench(tmp_path, verbs, spec=None):
    spec = parse_spec(spec or {"name": "t", "attacks": ["none", "blended"], "methods": ["vanilla"],
                               "data": str(tmp_path / "data")})
    return Bench(spec, tmp_path / "out", verb=verbs, quiet=True, log=lambda *_: None)


def test_rerun_skips_finished_cells_and_kill_between_cells_loses_nothing(tmp_path):
    first = FakeVerbs(fail_at=5)  # none: train, eval a, eval b; blended: poison, [train fails]
    with pytest.raises(RobustITError, match="rerun the same command"):
        _bench(tmp_path, first).run()
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == 2
    second = FakeVerbs()
    records = _bench(tmp_path, second).run()
    assert second.calls == ["train", "eval", "eval"]  # the blended run only; poison was done
    assert len(records) == 4
    third = FakeVerbs()
    _bench(tmp_path, third).run()
    assert third.calls == []
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 4


def test_kill_inside_a_cell_redoes_only_the_unfinished_step(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, FakeVerbs(fail_at=3, interrupt=True)).run()  # killed in the 2nd eval
    again = FakeVerbs()
    _bench(tmp_path, again).run()
    assert again.calls == ["eval", "poison", "train", "eval", "eval"]


def test_corrupt_cell_record_is_reported_and_redone(tmp_path):
    _bench(tmp_path, FakeVerbs()).run()
    cell = sorted((tmp_path / "out" / "cells").glob("*.json"))[0]
    cell.write_text("{not json")
    logs = []
    bench = _bench(tmp_path, FakeVerbs())
    bench.log = logs.append
    bench.run()
    assert any("corrupt cell record" in line and cell.name in line for line in logs)
    assert json.loads(cell.read_text())["eval"]["metrics"]["CIDEr"] == 50.0
    records, warnings = load_results([tmp_path / "out"])
    assert len(records) == 4 and warnings == []


def test_output_folder_of_another_spec_is_refused_before_work(tmp_path):
    _bench(tmp_path, FakeVerbs()).run()
    verbs = FakeVerbs()
    other = {"name": "t", "attacks": ["none"], "methods": ["vanilla"], "data": str(tmp_path / "data")}
    with pytest.raises(ConfigError, match="holds results of another spec"):
        _bench(tmp_path, verbs, other).run()
    assert verbs.calls == []


def test_a_tiny_grid_runs_end_to_end_through_the_real_verbs(tmp_path, capsys):
    save_base(tiny_model(), tmp_path / "base")
    for name, n in (("train", 16), ("test-a", 4)):
        save_split(tiny_dataset(n, name=name), tmp_path / "data" / name, name)
    spec = {"name": "tiny", "model": str(tmp_path / "base"), "data": str(tmp_path / "data"),
            "train_size": 12, "attacks": ["none", "blended"], "rates": [0.25],
            "methods": ["vanilla", {"name": "robustit", "params": {"gamma": 0.5}}],
            "test_sets": ["test-a"], "train": {"max_steps": 2, "batch_size": 4},
            "eval": {"n": 4, "max_new_tokens": 3, "scorers": ["BLEU", "CIDEr"]}}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    argv = ["bench", "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0
    records, warnings = load_results([tmp_path / "out"])
    assert len(records) == 4 and not warnings
    poisoned = [r for r in records if r["key"]["attack"] == "blended"]
    assert all(r["eval"]["asr"]["blended"]["both"]["n"] == 4 for r in poisoned)
    assert all(r["train"]["n_samples"] == 12 for r in records)
    assert main(argv) == 0  # a rerun finds everything done
    assert "0 to run" in capsys.readouterr().out


# --- inference-time defenses as cells (issue 8) ------------------------------------------

INFERENCE_SPEC = {"name": "inf", "attacks": ["blended"], "rates": [0.05], "test_sets": ["test-b"],
                  "methods": ["vanilla", {"name": "robustit"},
                              {"name": "vanilla", "inference": {"prompt_filter": "realistic"}},
                              {"name": "robustit", "inference": {"magnitude_prune": 0.2}}]}


def test_inference_options_share_the_training_run_and_get_their_own_cells():
    keys = expand(parse_spec(INFERENCE_SPEC))
    assert len(keys) == 4 and len({cell_id(k) for k in keys}) == 4
    assert len({run_id(k) for k in keys}) == 2  # two trainings: vanilla, robustit
    plain = [k for k in keys if not k["inference"]]
    assert all(k["inference"] == {} for k in plain) and len(plain) == 2
    assert [cell_id(k) for k in keys] == [
        "blended-0.05-paper__vanilla__s0__test-b__0shot",
        "blended-0.05-paper__vanilla__s0__test-b__0shot__pfrealistic",
        "blended-0.05-paper__robustit__s0__test-b__0shot",
        "blended-0.05-paper__robustit__s0__test-b__0shot__mp0.2"]  # a run's cells are adjacent


def test_specs_without_inference_keep_their_hash_and_cell_ids():
    spec = parse_spec(GRID)
    assert all("inference" not in m for m in spec.canonical()["methods"])
    with_empty = parse_spec({**GRID, "methods": [{"name": "vanilla", "inference": {}},
                                                  {"name": "robustit", "params": {"components": "both"}}]})
    assert with_empty.sha256() == spec.sha256()
    assert parse_spec(INFERENCE_SPEC).sha256() != parse_spec({**INFERENCE_SPEC, "methods": ["vanilla"]}).sha256()
    key = dict(expand(spec)[0])
    old = {k: v for k, v in key.items() if k != "inference"}  # a key written before the field
    assert cell_id(old) == cell_id(key) == "none__vanilla__s0__test-a__0shot"


@pytest.mark.parametrize("inference, words", [
    ({"prompt_filtr": "perfect"}, ["unknown key(s) ['prompt_filtr']", "magnitude_prune", "prompt_filter"]),
    ({"magnitude_prune": 1.5}, ["magnitude_prune"]),
    ({"magnitude_prune": 0}, ["magnitude_prune", "leave the key out"]),
    ({"prompt_filter": "no-such-list.txt"}, ["no-such-list.txt"]),
    ("realistic", ["`inference` must be a mapping"]),
])
def test_bad_inference_options_are_named(inference, words):
    with pytest.raises(ConfigError) as err:
        parse_spec({"name": "x", "methods": [{"name": "vanilla", "inference": inference}]})
    for word in words:
        assert word in str(err.value)


def test_duplicate_method_entries_are_refused():
    with pytest.raises(ConfigError, match="same cell"):
        parse_spec({"name": "x", "methods": ["vanilla", {"name": "vanilla", "inference": {}}]})


class ArgvVerbs(FakeVerbs):
    """FakeVerbs that also keeps every argv."""

    def __call__(self, argv):
        self.argvs = getattr(self, "argvs", []) + [list(argv)]
        return super().__call__(argv)


def test_inference_cells_train_once_and_pass_the_options_to_eval(tmp_path):
    verbs = ArgvVerbs()
    records = _bench(tmp_path, verbs, {**INFERENCE_SPEC, "data": str(tmp_path / "data")}).run()
    assert verbs.calls == ["poison", "train", "eval", "eval", "train", "eval", "eval"]
    evals = [a for a in verbs.argvs if a[0] == "eval"]
    outs = [a[a.index("--out") + 1] for a in evals]
    assert len(set(outs)) == 4 and outs[1].endswith("eval-test-b-0shot-pfrealistic.json")
    assert evals[1][evals[1].index("--prompt-filter") + 1] == "realistic"
    assert evals[3][evals[3].index("--magnitude-prune") + 1] == "0.2"
    assert "--prompt-filter" not in evals[0] and "--magnitude-prune" not in evals[0]
    assert [r["key"]["inference"] for r in records] == [{}, {"prompt_filter": "realistic"}, {},
                                                        {"magnitude_prune": 0.2}]


def test_records_written_before_the_inference_field_count_as_done(tmp_path):
    _bench(tmp_path, FakeVerbs()).run()
    for path in (tmp_path / "out" / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        del record["key"]["inference"]  # as the committed bench code wrote them
        path.write_text(json.dumps(record))
    again = FakeVerbs()
    records = _bench(tmp_path, again).run()
    assert again.calls == [] and len(records) == 4
    assert all(r["key"]["inference"] == {} for r in records)


def test_inference_options_survive_the_canonical_round_trip_of_worker_processes():
    # `robustit bench --jobs N` hands workers spec.canonical() and parses it again
    for data in (INFERENCE_SPEC, GRID):
        spec = parse_spec(data)
        again = parse_spec(spec.canonical())
        assert again.sha256() == spec.sha256() and expand(again) == expand(spec)


def test_a_folder_made_on_other_base_weights_is_refused_and_its_cells_not_reused(tmp_path):
    base = tmp_path / "base"
    save_base(tiny_model(), base)
    spec = {"name": "t", "model": str(base), "attacks": ["none"], "methods": ["vanilla"],
            "data": str(tmp_path / "data")}
    first = _bench(tmp_path, FakeVerbs(), spec)
    records = first.run()
    assert all(r["model"]["fingerprint"] == first.model_fingerprint() for r in records)
    save_base(tiny_model(seed=1), base)  # same name, new weights (a replaced default base)
    verbs = FakeVerbs()
    again = _bench(tmp_path, verbs, spec)
    with pytest.raises(ConfigError, match="other base weights"):
        again.run()
    assert verbs.calls == [] and again.finished() == {}
