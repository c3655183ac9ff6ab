"""GenEval's folder layout for generated images, read and written.

    DIR/00000/metadata.jsonl      one JSON object: the prompt's metadata
    DIR/00000/samples/0000.png    the images generated for it
    DIR/00001/...

This is the layout GenEval's ``generation`` scripts write and its ``evaluate_images.py`` reads, so
folders move between visalign and GenEval tooling unchanged. Everything wrong with a folder is a
``UserError`` naming the file (and line) at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from visalign.errors import UserError
from visalign.report.grid import to_pil
from visalign.worlds.shapes.metadata import validate_metadata

METADATA = "metadata.jsonl"
SAMPLES = "samples"


def prompt_dir(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"{index:05d}"


def write_prompt_folder(out_dir: str | Path, index: int, metadata: dict, images: Sequence[Any]) -> Path:
    """Write one prompt's folder (metadata + samples/NNNN.png); returns the folder."""
    folder = prompt_dir(out_dir, index)
    (folder / SAMPLES).mkdir(parents=True, exist_ok=True)
    (folder / METADATA).write_text(json.dumps(metadata) + "\n", encoding="utf-8")
    for j, image in enumerate(images):
        to_pil(image).save(folder / SAMPLES / f"{j:04d}.png")
    return folder


def read_metadata(path: Path) -> dict:
    """The single metadata object of a prompt folder, validated."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: missing (every prompt folder needs a {METADATA})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    found = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if len(found) != 1:
        raise UserError(f"{path}: expected exactly one JSON object, found {len(found)} non-empty lines")
    lineno, line = found[0]
    try:
        md = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    validate_metadata(md, f"{path}:{lineno}")
    return md


def read_folder(root: str | Path) -> Iterator[tuple[int, dict, list[Path]]]:
    """Yield (index, metadata, sorted sample paths) for every NNNNN prompt folder under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise UserError(
            f"{root}: no prompt folders (expected {root}/00000/{METADATA} and {root}/00000/{SAMPLES}/*.png)"
        )
    for folder in folders:
        md = read_metadata(folder / METADATA)
        samples = sorted((folder / SAMPLES).glob("*.png"))
        if not samples:
            raise UserError(f"{folder / SAMPLES}: no PNG images")
        yield int(folder.name), md, samples


def load_image(path: str | Path) -> np.ndarray:
    """A sample as uint8 (H, W, 3); a missing or unreadable file is a UserError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: corrupt or unreadable PNG ({err})") from None
