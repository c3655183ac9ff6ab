"""A run directory is owned by one run, always resumable, never mixed: crash before the first checkpoint, a second
trainer on the same folder, a resume that changes the run, a torn metrics line, a run that diverges, a full disk."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time

import pytest
import torch

from engine_fixtures import Brightness, linear_decode
from engine_fixtures import tiny_trainer as _trainer
from visalign.errors import UserError
from visalign.report.metrics import read_metrics
from visalign.run_directory import RunLock

torch.set_num_threads(1)
TIMING = ("time/", "images_per_s")


def _rows(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(run_dir / "metrics.jsonl")]


def _run(tmp_path, overrides, name="run", reward=None):
    tr = _trainer(tmp_path, overrides, name=name, reward=reward)
    tr.generator.decode = linear_decode
    return tr, tr.run()


def _weights(tr):
    return tr.generator.trainable_state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CrashOnce(Brightness):
    """Brightness that raises once, on its ``crash_at``-th call (a crash in the middle of a run)."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.calls, self.crash_at = 0, crash_at

    def score(self, images, prompts, metadata):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().score(images, prompts, metadata)


def test_a_crash_before_the_first_checkpoint_resumes_as_a_clean_start(tmp_path, capsys):
    common = ["train.iterations=3", "checkpoint.every=0"]
    straight, _ = _run(tmp_path, common, name="straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, common, reward=CrashOnce(crash_at=2))
    assert len(_rows(tmp_path / "run")) == 1 and not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(UserError, match="already holds a run.*--resume"):  # never a silent restart without --resume
        _run(tmp_path, common)
    resumed, summary = _run(tmp_path, [*common, "resume=auto"])
    assert "no checkpoint to resume from; starting the run from the beginning" in capsys.readouterr().err
    assert summary["finished"] and _same(_weights(straight), _weights(resumed))
    assert _rows(tmp_path / "run") == _rows(tmp_path / "straight")


def test_a_second_run_on_a_locked_run_directory_stops_at_once(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from visalign.run_directory import RunLock; "
         f"RunLock({str(run_dir)!r}, 'train').acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another run \(process {holder.pid} "):
            _run(tmp_path, ["train.iterations=1"])
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # in one process too: the lock belongs to an open file, not to a process
    with RunLock(run_dir), pytest.raises(UserError, match="in use by another run"):
        _run(tmp_path, ["train.iterations=1"])


def test_a_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    import socket

    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "train",
                                               "started": "2026-01-01T00:00:00"}))
    _, summary = _run(tmp_path, ["train.iterations=1"])
    err = capsys.readouterr().err
    assert summary["finished"] and f"stale lock of process {dead.pid}" in err and "no longer running" in err
    assert not (run_dir / ".lock").exists()  # released at the end of the run


def test_resume_refuses_run_defining_changes_and_records_the_allowed_ones(tmp_path, capsys):
    _run(tmp_path, ["train.iterations=4", "stop_after=2", "checkpoint.every=1"])
    config = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"changed data.group_size \(4 -> 6\), seed \(0 -> 1\)"):
        _run(tmp_path, ["train.iterations=4", "resume=auto", "seed=1", "data.group_size=6"])
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # the record still describes the run
    _, summary = _run(tmp_path, ["train.iterations=5", "resume=auto", "eval.every=3"])
    assert summary["finished"] and summary["iterations_done"] == 5
    record = [json.loads(line) for line in (tmp_path / "run" / "resumes.jsonl").read_text().splitlines()]
    assert record[-1]["iteration"] == 2 and record[-1]["changed"]["train.iterations"] == [4, 5]
    assert "eval.every" in record[-1]["changed"] and "resume" in record[-1]["changed"]


def test_resume_refuses_more_iterations_under_a_decaying_schedule(tmp_path):
    _run(tmp_path, ["train.iterations=4", "stop_after=1", "train.lr_schedule=cosine"])
    with pytest.raises(UserError, match="train.iterations .*cosine"):
        _run(tmp_path, ["train.iterations=8", "resume=auto", "train.lr_schedule=cosine"])


def test_a_torn_last_metrics_line_is_recovered(tmp_path):
    common = ["train.iterations=3", "checkpoint.every=1"]
    _run(tmp_path, common, name="straight")
    _run(tmp_path, [*common, "stop_after=2"])
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"iteration": 3, "reward/me')  # what a kill or a full disk leaves mid-write
    assert [r["iteration"] for r in read_metrics(metrics)] == [1, 2]
    from visalign.cli import main

    assert main(["report", str(tmp_path / "run")]) == 0  # the report reads the run as it stands
    _run(tmp_path, [*common, "resume=auto"])
    assert _rows(tmp_path / "run") == _rows(tmp_path / "straight")
    text = metrics.read_text().splitlines()
    metrics.write_text("\n".join([text[0], "{oops", *text[1:]]) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: malformed metrics line"):
        read_metrics(metrics)


def test_a_diverging_run_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    tr = _trainer(tmp_path, ["train.iterations=4", "checkpoint.every=1", "train.grad_clip=0"])
    tr.generator.decode = linear_decode
    step = tr.iteration

    def spike(it):  # a learning-rate spike in iteration 3 alone: its update makes the weights inf / NaN
        if it == 3:
            for group in tr.optimizer.param_groups:
                group["lr"] = float("inf")
        return step(it)

    tr.iteration = spike
    with pytest.raises(UserError, match=r"training diverged at iteration 3: .*last good checkpoint is .*iter_000002"):
        tr.run()
    assert [r["iteration"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["iter_000001", "iter_000002"]
    _, summary = _run(tmp_path, ["train.iterations=4", "checkpoint.every=1", "train.grad_clip=0", "resume=auto"])
    assert summary["finished"]  # the last good checkpoint resumes


def test_a_full_disk_during_a_run_is_one_line_naming_the_path(tmp_path, monkeypatch):
    from visalign.report import metrics as metrics_module

    tr = _trainer(tmp_path, ["train.iterations=3", "checkpoint.every=1"])
    tr.generator.decode = linear_decode
    log = metrics_module.MetricsLogger.log
    calls = {"n": 0}

    def full_after_one(self, row):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return log(self, row)

    monkeypatch.setattr(metrics_module.MetricsLogger, "log", full_after_one)
    with pytest.raises(UserError, match=r"metrics.jsonl: No space left on device; the checkpoints already in"):
        tr.run()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["iter_000001"]
    assert not (tmp_path / "run" / ".lock").exists()  # the lock is released on the way out


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        _run(tmp_path, ["train.iterations=2"], reward=CrashOnce(crash_at=1))
    start = time.perf_counter()
    _, summary = _run(tmp_path, ["train.iterations=1", "resume=auto"])
    assert summary["finished"] and time.perf_counter() - start < 60


def test_every_recipe_checkpoints_during_its_run():
    """A crash in a recipe's run loses at most ``checkpoint.every`` iterations, never the whole run."""
    from pathlib import Path

    from visalign.config import load_train_config

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        cfg = load_train_config(path)
        assert 0 < cfg.checkpoint.every < cfg.train.iterations, path.name
    quickstart = load_train_config(Path(__file__).parent.parent / "recipes" / "quickstart.yaml")
    assert quickstart.checkpoint.every <= 5
