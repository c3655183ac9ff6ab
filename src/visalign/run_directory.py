"""Owning a run directory: one run at a time, and a resume that continues the same run.

* ``RunLock``: a run holds ``RUN_DIR/.lock`` (an ``flock``, released by the kernel when the process dies) while it
  owns the folder, so a second trainer on the same folder stops at once instead of interleaving metrics and
  checkpoints. The file names the owner; a lock file left by a process that no longer runs is reported as stale
  and taken over.
* ``resume_changes``: which config keys a resume may change. Only keys that cannot change the trajectory (how long
  to run, logging, evaluation cadence, checkpoint cadence, threads) may differ from the config the checkpoint was
  written with; any other difference (seed, group size, learning rate, model, reward...) is refused, by name, so
  that ``config.yaml`` keeps describing every iteration of the run. What a resume changed is appended to
  ``RUN_DIR/resumes.jsonl``.
* ``discard_unfinished_attempt``: what ``resume=auto`` does when an earlier attempt left metrics but no
  checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from visalign.errors import UserError

LOCK_FILE = ".lock"
RESUMES_FILE = "resumes.jsonl"

# keys (or sections, ending in ".") a resume may change: none of them enters the trajectory
RESUMABLE = (
    "resume", "run_dir", "stop_after", "train.iterations", "train.time_budget_min", "train.threads",
    "eval.every", "checkpoint.every", "checkpoint.keep_last", "log.",
)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive, non-blocking lock on a run directory (``with RunLock(run_dir, "train") as lock: ...``)."""

    def __init__(self, run_dir: str | Path, command: str = "train") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self._fd: int | None = None
        self.stale_owner: dict[str, Any] | None = None  # set when a dead process's lock file was taken over

    def _owner(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> RunLock:
        import fcntl

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.run_dir}: cannot create the run directory ({err.strerror or err})") from None
        for _attempt in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"{self.path}: cannot lock the run directory ({err.strerror or err})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = self._owner()
                who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
                raise UserError(f"{self.run_dir}: in use by another run ({who}, '{owner.get('command', '?')}' since "
                                f"{owner.get('started', '?')}); wait for it to end or choose another run_dir") from None
            # the file may have been unlinked by its previous owner between our open and our flock: lock the file
            # that is at the path now, or two runs could each hold a lock on a different inode
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            break
        else:  # pragma: no cover - ten lost races in a row
            raise UserError(f"{self.path}: could not lock the run directory")
        previous = self._owner()
        pid = previous.get("pid")
        if isinstance(pid, int) and previous.get("host") == socket.gethostname() and pid != os.getpid():
            self.stale_owner = {**previous, "alive": _alive(pid)}
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def stale_message(self) -> str | None:
        """One line about a lock file left by an earlier run that did not end cleanly, or None."""
        owner = self.stale_owner
        if owner is None:
            return None
        state = "no longer running" if not owner["alive"] else "still running but no longer holding the lock"
        return (f"{self.path}: took over a stale lock of process {owner['pid']} ('{owner.get('command', '?')}' "
                f"since {owner.get('started', '?')}, {state}); the earlier run did not end cleanly")

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            self.path.unlink()  # unlink before unlocking: a waiting process then re-checks the inode (above)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def _resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def resume_changes(saved: dict[str, Any], now: dict[str, Any], source: str) -> dict[str, list[Any]]:
    """``{key: [checkpoint's value, this run's value]}`` for the keys a resume changes; refuses (``UserError``
    naming every key) any change that would alter the trajectory. ``train.iterations`` changes the learning-rate
    schedule's length, so it may change only with a constant schedule."""
    old, new = _flatten(saved), _flatten(now)
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = [k for k in changed if not _resumable(k)]
    schedule = new.get("train.lr_schedule")
    if "train.iterations" in changed and schedule not in (None, "constant"):
        refused.append(f"train.iterations (the '{schedule}' learning-rate schedule spans the whole run)")
    if refused:
        details = ", ".join(f"{k} ({_value(changed[k][0])} -> {_value(changed[k][1])})" if k in changed else k
                            for k in refused)
        raise UserError(f"{source}: resuming with a changed {details}; these keys define the run and must stay "
                        f"as the checkpoint has them (start a new run_dir to change them)")
    return changed


def _value(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_resume(run_dir: str | Path, iteration: int, checkpoint: Path, changed: dict[str, list[Any]],
                  skipped: list[str]) -> None:
    """Append one line to ``RUN_DIR/resumes.jsonl``: where the run continued from and what it changed."""
    row = {"iteration": iteration, "checkpoint": str(checkpoint), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "changed": changed, "skipped_damaged": skipped}
    with open(Path(run_dir) / RESUMES_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def discard_unfinished_attempt(run_dir: str | Path) -> int:
    """Remove what an attempt that died before its first checkpoint wrote (metrics, summary, resumes, evaluations),
    so that ``resume=auto`` starts the run afresh; returns how many metrics lines were discarded."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    logged = sum(1 for line in metrics.read_text(errors="replace").splitlines() if line.strip())
    metrics.unlink()
    for stale in ("summary.json", RESUMES_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "evals", ignore_errors=True)
    return logged
