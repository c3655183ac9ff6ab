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

from visalign.report import plots
from visalign.report.grid import make_grid

FIGURES = "figures"


def eval_samples(eval_dir: Path) -> list[dict[str, Any]]:
    """The evaluation's saved sample images: [{file, tag, prompt, seed}] (report/evaluation.py writes them)."""
    index = eval_dir / "samples" / "index.json"
    return json.loads(index.read_text()) if index.is_file() else []


def _verdict(eval_dir: Path, sample: dict[str, Any]) -> str:
    """" [right]" / " [wrong]" for a saved sample: its file is named after its index in the evaluation's images,
    whose verdicts results.json lists in the same order; "" where the evaluation has none (a non-verifier reward)."""
    path = eval_dir / "results.json"
    images = (json.loads(path.read_text()).get("images") or []) if path.is_file() else []
    i = int(Path(sample["file"]).stem)
    if i >= len(images) or "correct" not in images[i] or images[i].get("prompt", sample["prompt"]) != sample["prompt"]:
        return ""
    return " [right]" if images[i]["correct"] else " [wrong]"


def before_after_sheet(first: Path, last: Path, per_tag: int = 2, scale: int = 2):
    """A PIL sheet, four columns: (before, after) for two images per row; None without sample images."""
    from PIL import Image

    before = eval_samples(first)
    after = {(s["prompt"], s["seed"]): s for s in eval_samples(last)}
    if not before:
        return None
    shown: dict[str, int] = {}
    images, labels = [], []
    for s in before:
        a = after.get((s["prompt"], s["seed"]))
        if a is None or shown.get(s["tag"], 0) >= per_tag:
            continue
        shown[s["tag"]] = shown.get(s["tag"], 0) + 1
        images += [Image.open(first / "samples" / s["file"]), Image.open(last / "samples" / a["file"])]
        labels += [f"{first.name}{_verdict(first, s)}: {s['prompt']}", f"{last.name}{_verdict(last, a)}"]
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
