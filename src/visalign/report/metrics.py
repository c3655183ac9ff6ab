"""Run metrics: one JSON object per line in ``metrics.jsonl`` (always), TensorBoard and wandb (optional).

wandb is imported only when asked for; if it is missing the error says how to get it (offline mode works:
``WANDB_MODE=offline``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from visalign.errors import UserError
from visalign.jsonl import append_jsonl, read_log, truncate_jsonl

METRICS_LINE = "metrics line"  # what the messages about a bad line of metrics.jsonl call it


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``. A torn last line (what a kill or a full disk leaves mid-write) is dropped:
    the run that wrote it never finished that iteration, and a resume logs it again. Any other line that is not a
    JSON object is a ``UserError`` naming the file and the line."""
    return read_log(path, METRICS_LINE)


def truncate_metrics(path: str | Path, last_iteration: int) -> None:
    """Drop lines logged after ``last_iteration`` (a resumed run re-logs them) and a torn last line."""
    truncate_jsonl(path, "iteration", last_iteration, METRICS_LINE)


class MetricsLogger:
    def __init__(self, run_dir: str | Path, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "visalign", config: dict[str, Any] | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise UserError("log.tensorboard=true needs the tensorboard package (pip install tensorboard)") from err
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise UserError(
                    "log.wandb=true needs the wandb package (pip install wandb; WANDB_MODE=offline works without an account)"
                ) from None
            self._wandb = wandb_module.init(project=wandb_project, dir=str(run_dir), config=config or {})

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = int(row.get("iteration", 0))
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        append_jsonl(self.path, clean)
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "iteration"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
