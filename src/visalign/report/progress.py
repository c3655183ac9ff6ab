"""The library's progress bars, all built here so that they look alike.

* ``TrainProgress``: the training loop's bar (iteration, reward, latest eval score, elapsed time and ETA);
* ``task_progress``: a bar for any other long job (pretraining stages, sampling, scoring, reward-model training):
  the task's description, a bar, done / total, optional extra columns, elapsed time and ETA.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def task_progress(
    *extra: str, console: Console | None = None, transient: bool = True, disable: bool = False, eta: bool = True
) -> Progress:
    """A ``rich`` progress bar; each of ``extra`` is a column template (e.g. ``"{task.fields[info]}"``)."""
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(text) for text in extra]
    columns.append(TimeElapsedColumn())
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=transient, disable=disable)


class TrainProgress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self.total, self.start = total, start

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("reward {task.fields[reward]}"),
                TextColumn("eval {task.fields[eval]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, reward="-", eval="-")
        return self

    def update(self, iteration: int, reward: float | None = None, eval_score: float | None = None) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {}
        if reward is not None:
            fields["reward"] = f"{reward:.3f}"
        if eval_score is not None:
            fields["eval"] = f"{eval_score:.3f}"
        self._progress.update(self._task, completed=iteration, **fields)

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
