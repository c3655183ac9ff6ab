"""Ground-truth folders: render every prompt of a split into GenEval's layout, plus a contact sheet.

Image j of prompt i is rendered with seed ``image_seed(seed, i, j)``, so a folder is reproducible
from (split, images per prompt, size, seed) alone.
"""

from __future__ import annotations

from pathlib import Path

from rich.progress import track

from visalign.eval.geneval_layout import write_prompt_folder
from visalign.report.grid import make_grid
from visalign.worlds.shapes.render import render_scene

CONTACT_SHEET = "contact_sheet.png"
SHEET_PER_TAG = 10  # the sheet shows the first image of the first 10 prompts of each tag


def image_seed(seed: int, index: int, j: int) -> int:
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
    items = list(enumerate(metadatas))
    for index, md in track(items, description="rendering", disable=not progress, transient=True):
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
