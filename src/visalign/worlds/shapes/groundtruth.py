"""Ground-truth folders: render every prompt of a split into GenEval's layout, plus a contact sheet.

Image j of prompt i is rendered with seed ``image_seed(seed, i, j)``, so a folder is reproducible
from (split, images per prompt, size, seed) alone.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from visalign.eval.geneval_layout import write_prompt_folder
from visalign.report.grid import make_grid
from visalign.report.progress import task_progress
from visalign.worlds.shapes.render import render_scene

CONTACT_SHEET = "contact_sheet.png"
SHEET_PER_TAG = 10  # the sheet shows the first image of the first 10 prompts of each tag


def image_seed(seed: int, index: int, j: int) -> int:
    """The render seed of image ``j`` of prompt ``index``: a scheme of its own, distinct from the noise seeds of
    generated images (``pretrain.generate.image_seed``), kept so that a ground-truth folder renders as before."""
    return seed * 1_000_003 + index * 1_009 + j


def render_folder(
    out_dir: str | Path,
    metadatas: list[dict],
    images_per_prompt: int = 4,
    size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Render ``metadatas`` into ``out_dir`` (GenEval layout); returns the contact sheet's path.

    The sheet stays a readable size for any split: at most ``SHEET_PER_TAG`` prompts per tag.
    """
    out_dir = Path(out_dir)
    firsts, labels = [], []
    per_tag: dict[str, int] = {}
    with task_progress(console=Console(), disable=not progress) as bar:  # stdout: stderr is for the one-line errors
        for index, md in enumerate(bar.track(metadatas, description="rendering")):
            images = [render_scene(md, image_seed(seed, index, j), size) for j in range(images_per_prompt)]
            write_prompt_folder(out_dir, index, md, images)
            per_tag[md["tag"]] = per_tag.get(md["tag"], 0) + 1
            if per_tag[md["tag"]] <= SHEET_PER_TAG:
                firsts.append(images[0])
                labels.append(md["prompt"])
    sheet = make_grid(firsts, labels, ncols=10, scale=max(1, 128 // size), caption_lines=3)
    path = out_dir / CONTACT_SHEET
    sheet.save(path)
    return path
