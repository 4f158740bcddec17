"""robustit bench --jobs N: worker processes give the same records as one process."""

import json

from robustit.bench.schema import load_results
from robustit.cli import main
from robustit.data.mimicit import save_split
from robustit.models.checkpoint import save_base

from tiny import tiny_dataset, tiny_model


def _figures(folder):
    records, warnings = load_results([folder])
    assert not warnings
    return {r["id"]: (r["eval"]["metrics"], r["eval"].get("asr"), r["train"]["steps"]) for r in records}


def test_parallel_workers_match_one_process_and_keep_logs(tmp_path):
    save_base(tiny_model(), tmp_path / "base")
    for name, n in (("train", 16), ("test-a", 4)):
        save_split(tiny_dataset(n, name=name), tmp_path / "data" / name, name)
    spec = {"name": "tiny", "model": str(tmp_path / "base"), "data": str(tmp_path / "data"),
            "attacks": ["none", "badnet"], "rates": [0.25], "methods": ["vanilla"],
            "test_sets": ["test-a"], "train": {"max_steps": 2, "batch_size": 4},
            "eval": {"n": 4, "max_new_tokens": 3, "scorers": ["BLEU"]}, "threads": 1}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    base = ["bench", "--spec", str(tmp_path / "spec.yaml"), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    assert main(base + ["--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    assert _figures(tmp_path / "one") == _figures(tmp_path / "two")
    assert len(list((tmp_path / "two" / "logs").glob("*.log"))) == 2
    assert main(base + ["--out", str(tmp_path / "two"), "--jobs", "0"]) == 2
