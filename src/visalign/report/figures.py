"""The report's pictures as PNG files beside it (``RUN_DIR/figures/``), for pasting into a README or a paper.

* ``reward_curve.png`` / ``eval_curve.png``: the same curves the HTML page embeds;
* ``before_after.png``: for the first ``per_tag`` held-out images of every tag, the first evaluation's image
  beside the last one's (same prompt, same seed, deterministic sampler), captioned with the prompt and the
  verdict of each, enlarged with nearest-neighbour resampling so that 64 px images stay readable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from visalign.report import plots
from visalign.report.grid import make_grid

FIGURES = "figures"


def eval_samples(eval_dir: Path) -> list[dict[str, Any]]:
    """The evaluation's saved sample images: [{file, tag, prompt, seed}] (report/evaluation.py writes them)."""
    index = eval_dir / "samples" / "index.json"
    return json.loads(index.read_text()) if index.is_file() else []


def paired_samples(first: Path, last: Path) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each saved sample of the first evaluation with the last one's sample of the same prompt and seed (or None)."""
    after = {(s["prompt"], s["seed"]): s for s in eval_samples(last)}
    return [(s, after.get((s["prompt"], s["seed"]))) for s in eval_samples(first)]


def _verdicts(eval_dir: Path) -> list[dict[str, Any]]:
    """The evaluation's per-image rows from results.json (each with its prompt and, for the verifier, "correct")."""
    path = eval_dir / "results.json"
    return (json.loads(path.read_text()).get("images") or []) if path.is_file() else []


def _verdict(rows: list[dict[str, Any]], sample: dict[str, Any]) -> str:
    """" [right]" / " [wrong]" for a saved sample: its file is named after its index in the evaluation's images,
    the order of ``rows``; "" where there is no verdict (a non-verifier reward) or the row is of another prompt."""
    i = int(Path(sample["file"]).stem)
    if i >= len(rows) or "correct" not in rows[i] or rows[i].get("prompt", sample["prompt"]) != sample["prompt"]:
        return ""
    return " [right]" if rows[i]["correct"] else " [wrong]"


def before_after_sheet(first: Path, last: Path, per_tag: int = 2, scale: int = 2) -> Image.Image | None:
    """A sheet of four columns, two (before, after) pairs per row, ``per_tag`` pairs of each tag; None without
    sample images."""
    rows_b, rows_a = _verdicts(first), _verdicts(last)
    shown: dict[str, int] = {}
    images, labels = [], []
    for b, a in paired_samples(first, last):
        if a is None or shown.get(b["tag"], 0) >= per_tag:
            continue
        shown[b["tag"]] = shown.get(b["tag"], 0) + 1
        images += [Image.open(first / "samples" / b["file"]), Image.open(last / "samples" / a["file"])]
        labels += [f"{first.name}{_verdict(rows_b, b)}: {b['prompt']}", f"{last.name}{_verdict(rows_a, a)}"]
    if not images:
        return None
    return make_grid(images, labels, ncols=4, scale=scale, caption_lines=4)


def write_figures(run_dir: Path, rows: list[dict[str, Any]], evals: list[Path]) -> dict[str, Path]:
    """Write the PNGs that have data; returns name -> path."""
    out = run_dir / FIGURES
    written: dict[str, Path] = {}
    for name, png in (("reward_curve", plots.reward_curve(rows)), ("eval_curve", plots.eval_curve(rows))):
        if png is not None:
            out.mkdir(exist_ok=True)
            written[name] = out / f"{name}.png"
            written[name].write_bytes(png)
    sheet = before_after_sheet(evals[0], evals[-1]) if evals else None
    if sheet is not None:
        out.mkdir(exist_ok=True)
        written["before_after"] = out / "before_after.png"
        sheet.save(written["before_after"])
    return written
