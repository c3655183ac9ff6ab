"""kill -9 at random points of a tiny training run, inside checkpoint writes too; each time the run resumes, and the
end result equals the uninterrupted run bit for bit (weights, EMA, optimizer-driven trajectory, metrics)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine_fixtures import linear_decode
from engine_fixtures import tiny_trainer as _trainer
from visalign.checkpoint import list_checkpoints, load_checkpoint
from visalign.report.metrics import read_metrics

torch.set_num_threads(1)
TESTS = Path(__file__).parent
COMMON = ["train.iterations=6", "checkpoint.every=1", "train.ema.enabled=true", "train.inner_epochs=2",
          "train.minibatch_size=4", "train.lr=3e-3", "sampling.train_steps=2"]  # fmt: skip
TIMING = ("time/", "images_per_s")

# The child: the same tiny run, resumed from whatever an earlier child left. With KILL_AT_FSYNC=n it SIGKILLs
# itself at its n-th os.fsync call: a checkpoint write fsyncs its state file, then its meta.json, then (after the
# rename into place) the checkpoints folder, so n picks the phase of the write that is cut.
CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from engine_fixtures import linear_decode, tiny_trainer
from pathlib import Path
kill_at = int(os.environ.get("KILL_AT_FSYNC", "0"))
if kill_at:
    real_fsync, calls = os.fsync, [0]
    def fsync(fd):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)
    os.fsync = fsync
tr = tiny_trainer(Path(sys.argv[1]), sys.argv[2:])
tr.generator.decode = linear_decode
print("ready", flush=True)
tr.run()
print("finished", flush=True)
"""


def _child(tmp_path: Path, kill_at_fsync: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "KILL_AT_FSYNC": str(kill_at_fsync), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), *COMMON, "resume=auto"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _all_checkpoints_intact(run_dir: Path, fingerprint) -> list[int]:
    return [load_checkpoint(p, fingerprint)["iteration"] for p in list_checkpoints(run_dir)]


def test_kill_9_anywhere_then_resume_equals_the_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path, COMMON, name="straight")
    straight.generator.decode = linear_decode
    straight.run()
    fingerprint = straight.fingerprint()

    rng = random.Random(32)
    # a child's fsync calls 1-3 are its first checkpoint's (state file, meta.json, the folder after the rename into
    # place), 4-6 its second's: cut a state file, then a meta.json, then a rename's aftermath, then a random moment
    plans = [("fsync", rng.choice([1, 4])), ("fsync", 5), ("fsync", 3), ("timer", rng.uniform(0.0, 0.4))]
    killed, progress = 0, []
    for kind, where in plans:
        child = _child(tmp_path, kill_at_fsync=where if kind == "fsync" else 0)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        if kind == "timer":
            time.sleep(where)
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=120)
        err = child.stderr.read()
        assert child.returncode in (-signal.SIGKILL, 0), err
        assert "Traceback" not in err, err
        killed += child.returncode == -signal.SIGKILL
        # whatever the kill cut, every checkpoint under a final name reads back intact
        progress.append(_all_checkpoints_intact(tmp_path / "run", fingerprint))
    # the three cuts inside checkpoint writes happened, before the run's end (the timer's moment depends on the load)
    assert killed >= 3 and progress[2][-1] < 6, progress

    resumed = _trainer(tmp_path, [*COMMON, "resume=auto"])
    resumed.generator.decode = linear_decode
    summary = resumed.run()
    assert summary["finished"]
    a, b = straight.generator.trainable_state_dict(), resumed.generator.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = straight.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)

    def rows(run_dir):
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(run_dir / "metrics.jsonl")]

    assert rows(tmp_path / "run") == rows(tmp_path / "straight")
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
