"""ShapesBench: GenEval's scoring rules applied by the ShapesWorld verifier.

Per tag, strict accuracy is the fraction of images judged correct; ``overall`` is the unweighted
mean of the tag accuracies (GenEval's rule, so that a tag with many prompts does not dominate; both counted
by ``eval/pass_rate.py``); ``soft`` is the mean partial-credit score over all images. The same dict is written to
``DIR/results.json``, with one row per image (its verdict and reason) under ``"images"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from visalign.eval.geneval_layout import load_image, read_folder
from visalign.eval.pass_rate import mean_over_tags, tag_groups, tag_means
from visalign.report.progress import task_progress
from visalign.worlds.shapes.verifier import verify_batch
from visalign.worlds.shapes.vocab import TAGS

RESULTS = "results.json"
_BATCH = 256


def summarise(rows: list[dict]) -> dict:
    """Aggregate per-image rows (each with 'tag', 'correct', 'score') into the results dict."""
    groups = tag_groups([row["tag"] for row in rows], TAGS)
    per_tag = tag_means([row["correct"] for row in rows], groups)
    return {
        "overall": mean_over_tags(per_tag),
        "per_tag": per_tag,
        "soft": sum(row["score"] for row in rows) / len(rows) if rows else 0.0,
        "per_tag_soft": tag_means([row["score"] for row in rows], groups),
        "n_images": len(rows),
        "n_per_tag": {tag: len(idx) for tag, idx in groups.items()},
        "images": rows,
    }


def score_images(images: Any, metadatas: Sequence[dict]) -> dict:
    """Score images against their metadata; returns the results dict (see module docstring)."""
    verdicts = verify_batch(images, metadatas)
    rows = [
        {
            "tag": md["tag"],
            "prompt": md["prompt"],
            "correct": v.correct,
            "score": round(v.score, 6),
            "reason": v.reason,
        }
        for md, v in zip(metadatas, verdicts, strict=True)
    ]
    return summarise(rows)


def score_folder(folder: str | Path, write: bool = True, progress: bool = False) -> dict:
    """Score a GenEval-layout folder; writes ``folder/results.json`` when ``write``."""
    folder = Path(folder)
    entries = [(index, md, path) for index, md, paths in read_folder(folder) for path in paths]
    rows: list[dict] = []
    # on stdout: a transient bar leaves a newline behind where the console is no terminal, and stderr carries
    # the one-line error of a bad folder
    with task_progress(console=Console(), disable=not progress) as bar:
        task = bar.add_task("scoring", total=len(entries))
        for start in range(0, len(entries), _BATCH):
            chunk = entries[start : start + _BATCH]
            images = [load_image(path) for _, _, path in chunk]
            result = score_images(images, [md for _, md, _ in chunk])
            for (index, _, path), row in zip(chunk, result["images"], strict=True):
                rows.append({"index": index, "sample": str(path.relative_to(folder)), **row})
            bar.advance(task, len(chunk))
    results = {"folder": str(folder), **summarise(rows)}
    if write:
        (folder / RESULTS).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def format_table(results: dict, title: str = "ShapesBench") -> Table:
    """A rich table: one row per tag (images, strict accuracy, soft score) and the overall row."""
    table = Table(title=title)
    table.add_column("tag")
    table.add_column("images", justify="right")
    table.add_column("strict acc", justify="right")
    table.add_column("soft", justify="right")
    for tag, acc in results["per_tag"].items():
        n = results.get("n_per_tag", {}).get(tag, "")
        table.add_row(
            tag, str(n), f"{acc:.3f}", f"{results.get('per_tag_soft', {}).get(tag, float('nan')):.3f}"
        )
    table.add_section()
    table.add_row(
        "overall",
        str(results["n_images"]),
        f"{results['overall']:.3f}",
        f"{results['soft']:.3f}",
        style="bold",
    )
    return table
