"""robustit bench --jobs N: worker processes give the same records as one process, and stop
when the parent is stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

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


_SLEEPY_GRID = '''
import os, sys, time
from robustit.bench.parallel import pool_map
from robustit.cli import terminate_as_interrupt

def sleeper(task):
    open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
    time.sleep(300)

if __name__ == "__main__":
    terminate_as_interrupt()
    try:
        for _ in pool_map(sleeper, [(i,) for i in range(4)], 2):
            pass
    except KeyboardInterrupt:
        sys.exit(130)
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_parent_stops_the_workers_at_once(tmp_path, signum):
    """`timeout`, a scheduler or Ctrl-C on the parent alone: no worker runs on, no waiting for
    the runs in flight (each would take minutes)."""
    script = tmp_path / "grid.py"
    script.write_text(_SLEEPY_GRID)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("worker-*"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "workers did not start"
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - t0 < 30
    for marker in tmp_path.glob("worker-*"):
        pid = int(marker.name.split("-")[1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
