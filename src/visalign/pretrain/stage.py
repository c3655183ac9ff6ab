"""What the two training stages share: their random draws, learning rate, schedule of events and reports.

Step ``s`` of a stage draws from a generator seeded by ``(seed, stage, s)`` alone, so a resumed stage draws what
an uninterrupted one would have. Metrics go to ``run_dir/metrics.jsonl`` (one line every ``log.every`` steps),
and, when the console is not a terminal (a log file, CI), also as a printed line, since no progress bar shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from visalign.jsonl import append_jsonl
from visalign.pretrain.data import STAGE_IDS
from visalign.report.progress import task_progress
from visalign.seeding import seed_from_ints, torch_generator


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The generator of step ``step`` of ``stage`` (``data.STAGE_IDS``) in a run seeded ``seed``."""
    return torch_generator(seed_from_ints(seed, STAGE_IDS[stage], step))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def due(done: int, every: int, last: int) -> bool:
    """Whether an event of period ``every`` (0: never) falls after step ``done``: each period, and the last step."""
    return every > 0 and (done % every == 0 or done == last)


def stage_progress(console: Console) -> Progress:
    """A stage's progress bar, with the task's ``info`` field (the latest loss); none when not on a terminal."""
    return task_progress("{task.fields[info]}", console=console, transient=False, disable=not console.is_terminal)


def log_metrics(path: Path, row: dict[str, Any], console: Console, line: str) -> None:
    """Append ``row`` to the metrics log; print ``line`` where no progress bar shows the run's progress."""
    append_jsonl(path, row)
    if not console.is_terminal:
        console.print(line)
