"""The main job (dev/main): a bench spec, the activation picture, then the report."""

import json

from robustit import main_job
from robustit.data.mimicit import save_split
from robustit.models.checkpoint import save_base

from tiny import tiny_dataset, tiny_model


def test_main_job_runs_the_grid_and_writes_a_report_with_the_activation_picture(tmp_path, capsys):
    save_base(tiny_model(), tmp_path / "base")
    for name, n in (("train", 16), ("test-a", 4)):
        save_split(tiny_dataset(n, name=name), tmp_path / "data" / name, name)
    spec = {"name": "tinyjob", "model": str(tmp_path / "base"), "data": str(tmp_path / "data"),
            "attacks": ["none", "badnet"], "rates": [0.25],
            "methods": ["vanilla", {"name": "robustit", "params": {"components": "both"}}],
            "test_sets": ["test-a"], "train": {"max_steps": 2, "batch_size": 4},
            "eval": {"n": 4, "max_new_tokens": 3, "scorers": ["BLEU", "CIDEr"]}}
    (tmp_path / "tinyjob.yaml").write_text(json.dumps(spec))
    rc = main_job.main(["--work", str(tmp_path / "work"), "--spec", str(tmp_path / "tinyjob.yaml"),
                        "--jobs", "1", "--quiet"])
    assert rc == 0
    out = tmp_path / "work" / "bench" / "tinyjob"
    picture = json.loads((out / "activations.json").read_text())
    assert [r["label"] for r in picture["runs"]] == ["clean, VanillaIT", "badnet, VanillaIT", "badnet, RobustIT"]
    assert list((out / "report" / "plots").glob("*activation*.png"))
    printed = capsys.readouterr().out
    assert "report.html" in printed and "| BadNet" in printed
