"""Image grids (contact sheets) with optional captions, for reports, demos and eyeballing samples.

Small generated images (64 px) are unreadable at 1:1 in a document, so ``scale`` enlarges each cell
with nearest-neighbour resampling (pixels stay honest, no smoothing is invented); captions are
wrapped to the cell width and cut to ``caption_lines`` lines.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: Any) -> Image.Image:
    """PIL image from a PIL image, a uint8 / float HWC array, or a float CHW tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "detach"):
        image = image.detach().to("cpu").float().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def make_grid(
    images: Sequence[Any],
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    scale: int = 1,
    pad: int = 4,
    caption_lines: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay ``images`` out in a grid (``ncols`` columns, default about square), captions under each cell."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    tiles = [to_pil(im) for im in images]
    cw = max(t.width for t in tiles) * scale
    ch = max(t.height for t in tiles) * scale
    ncols = ncols or math.ceil(math.sqrt(len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    font = ImageFont.load_default()
    line_h = 12
    chars = max(4, cw // 6)
    cap_h = (caption_lines * line_h + 2) if labels is not None else 0
    sheet = Image.new("RGB", (ncols * (cw + pad) + pad, nrows * (ch + cap_h + pad) + pad), background)
    draw = ImageDraw.Draw(sheet)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        x, y = pad + c * (cw + pad), pad + r * (ch + cap_h + pad)
        if scale != 1:
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
        sheet.paste(tile, (x, y))
        if labels is not None:
            lines = textwrap.wrap(str(labels[k]), width=chars)[:caption_lines]
            for j, line in enumerate(lines):
                draw.text((x, y + ch + 1 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
