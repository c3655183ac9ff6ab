"""Offline preference data: Pick-a-Pic-style pair files and labelled-image files, read with clear errors.

Two layouts, as ``.jsonl`` (one JSON object a line) or ``.parquet`` (one row each):

* **pairs** (Diffusion-DPO; Diffusion-KTO reads each pair as one desirable and one undesirable image), the
  Pick-a-Pic columns: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` with ``label_0`` in {0, 0.5, 1}
  (1: image 0 preferred, 0: image 1 preferred, 0.5: a tie, skipped);
* **labelled images** (Diffusion-KTO): ``caption``, ``image``, ``label`` with ``label`` in {0, 1} (1: desirable).

An image is a file path (relative to the data file's folder, or absolute), raw bytes (parquet binary, or a
``{"bytes": ...}`` struct as written by Hugging Face ``datasets``), or a base64 string (optionally a
``data:image/...;base64,`` URI). Every error names the file, the line (JSONL, 1-based) or row (parquet, 0-based)
and the key at fault. The whole file is read into memory (parquet image bytes included): shard very large sets.

The images of a pair are mapped to the generator's latents by its adapter's ``encode_images`` (the VAE
posterior mean: deterministic, so a pair encodes the same way every time).

``python -m visalign.preference_data shapes OUT_DIR --pairs 512`` writes a ShapesWorld pair file
(``OUT_DIR/pairs.jsonl`` + PNGs): the winner is a rendering of the prompt, the loser a rendering of a scene that
differs from it in one way the verifier rejects (a wrong colour, count, shape, relation, digit).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from visalign.errors import UserError
from visalign.jsonl import read_jsonl
from visalign.seeding import numpy_rng

if TYPE_CHECKING:
    from visalign.models.base import Generator

PAIR_KEYS = ("caption", "jpg_0", "jpg_1", "label_0")
LABELLED_KEYS = ("caption", "image", "label")


@dataclass(frozen=True)
class ImageRef:
    """Where one image of the data lives: a path or its encoded bytes, plus its location for error messages."""

    source: Path | bytes
    where: str  # e.g. "pairs.jsonl:3 [jpg_0]"

    def open(self):  # -> PIL.Image.Image, fully decoded
        from PIL import Image, UnidentifiedImageError

        try:
            stream = io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source
            with Image.open(stream) as img:
                img.load()
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            what = f"'{self.source}'" if isinstance(self.source, Path) else f"({len(self.source)} bytes)"
            raise UserError(f"{self.where}: cannot read image {what} ({err})") from None

    def load(self, height: int, width: int) -> torch.Tensor:
        """The image as float [3, height, width] in [0, 1]: resized (shorter side) and centre-cropped."""
        import numpy as np
        from PIL import Image

        img = self.open()
        scale = max(height / img.height, width / img.width)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        img = img.crop((left, top, left + width, top + height))
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class PreferencePair:
    caption: str
    winner: ImageRef
    loser: ImageRef
    where: str


@dataclass(frozen=True)
class LabelledImage:
    caption: str
    image: ImageRef
    desirable: bool
    where: str


# ---------------------------------------------------------------------------------------------------------------
# reading


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for every record of a .jsonl or .parquet file."""
    if not path.is_file():
        raise UserError(f"{path}: preference data file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for lineno, row in read_jsonl(path):
            yield f"{path}:{lineno}", row
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading .parquet files needs pyarrow (pip install pyarrow)") from None
        try:
            table = pq.ParquetFile(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UserError(f"{path}: not a readable parquet file ({err})") from None
        index = 0
        for batch in table.iter_batches():
            for row in batch.to_pylist():
                yield f"{path} row {index}", row
                index += 1
    else:
        raise UserError(f"{path}: preference data must be a .jsonl or .parquet file")


def _get(row: dict[str, Any], key: str, loc: str, expected: Sequence[str]) -> Any:
    if key not in row or row[key] is None:
        raise UserError(f"{loc}: missing key '{key}' (expected keys: {', '.join(expected)})")
    return row[key]


def _caption(row: dict[str, Any], loc: str, expected: Sequence[str]) -> str:
    value = _get(row, "caption", loc, expected)
    if not isinstance(value, str):
        raise UserError(f"{loc} [caption]: expected a string, got {type(value).__name__}")
    return value


def _label(row: dict[str, Any], key: str, loc: str, allowed: tuple[float, ...], expected: Sequence[str]) -> float:
    value = _get(row, key, loc, expected)
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float) or float(value) not in allowed:
        names = ", ".join(f"{a:g}" for a in allowed)
        raise UserError(f"{loc} [{key}]: label must be one of {names}, got {value!r}")
    return float(value)


def _base64(text: str) -> bytes | None:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _image(row: dict[str, Any], key: str, loc: str, base: Path, expected: Sequence[str]) -> ImageRef:
    value = _get(row, key, loc, expected)
    at = f"{loc} [{key}]"
    if isinstance(value, dict):  # Hugging Face datasets' Image struct: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return ImageRef(bytes(value), at)
    if isinstance(value, str) and value:
        if value.startswith("data:"):
            data = _base64(value)
            if data is None:
                raise UserError(f"{at}: malformed base64 data URI")
            return ImageRef(data, at)
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if path.is_file():
            return ImageRef(path, at)
        data = _base64(value) if len(value) > 64 else None  # a bare base64 string (no short path decodes by chance)
        if data is not None:
            return ImageRef(data, at)
        raise UserError(f"{at}: image file '{value}' not found (relative paths are read from {base})")
    raise UserError(f"{at}: expected an image path, bytes or a base64 string, got {type(value).__name__}")


def load_preference_pairs(path: str | Path, verify_images: bool = True) -> list[PreferencePair]:
    """The non-tie pairs of a Pick-a-Pic-style file, winner first. ``verify_images`` decodes every image now, so
    that a bad one fails before training (and not mid-run)."""
    path = Path(path)
    pairs: list[PreferencePair] = []
    rows = 0
    for loc, row in _rows(path):
        rows += 1
        caption = _caption(row, loc, PAIR_KEYS)
        first = _image(row, "jpg_0", loc, path.parent, PAIR_KEYS)
        second = _image(row, "jpg_1", loc, path.parent, PAIR_KEYS)
        label = _label(row, "label_0", loc, (0.0, 0.5, 1.0), PAIR_KEYS)
        if verify_images:
            first.open()
            second.open()
        if label == 0.5:
            continue  # a tie carries no preference
        winner, loser = (first, second) if label == 1.0 else (second, first)
        pairs.append(PreferencePair(caption, winner, loser, loc))
    if not pairs:
        raise UserError(f"{path}: no preference pairs ({rows} rows, all ties)" if rows else f"{path}: no rows")
    return pairs


def load_labelled_images(path: str | Path, verify_images: bool = True) -> list[LabelledImage]:
    """Desirable / undesirable images: rows with ``image`` + ``label`` (0 / 1), or Pick-a-Pic pair rows (the
    preferred image desirable, the other undesirable; ties skipped)."""
    path = Path(path)
    items: list[LabelledImage] = []
    rows = 0
    for loc, row in _rows(path):
        rows += 1
        if "label_0" in row or "jpg_0" in row:
            caption = _caption(row, loc, PAIR_KEYS)
            refs = [_image(row, k, loc, path.parent, PAIR_KEYS) for k in ("jpg_0", "jpg_1")]
            label = _label(row, "label_0", loc, (0.0, 0.5, 1.0), PAIR_KEYS)
            if verify_images:
                for ref in refs:
                    ref.open()
            if label != 0.5:
                items.append(LabelledImage(caption, refs[0], label == 1.0, loc))
                items.append(LabelledImage(caption, refs[1], label == 0.0, loc))
            continue
        caption = _caption(row, loc, LABELLED_KEYS)
        ref = _image(row, "image", loc, path.parent, LABELLED_KEYS)
        label = _label(row, "label", loc, (0.0, 1.0), LABELLED_KEYS)
        if verify_images:
            ref.open()
        items.append(LabelledImage(caption, ref, label == 1.0, loc))
    if not items:
        raise UserError(f"{path}: no labelled images ({rows} rows, all ties)" if rows else f"{path}: no rows")
    return items


# ---------------------------------------------------------------------------------------------------------------
# encoding


def pixel_size(generator: Generator) -> tuple[int, int]:
    """(height, width) in pixels of the generator's images."""
    _, h, w = generator.latent_shape()
    factor = int(generator.pipeline.vae_scale_factor)
    return h * factor, w * factor


# ---------------------------------------------------------------------------------------------------------------
# a ShapesWorld pair file


def make_shapes_pairs(out_dir: str | Path, num_pairs: int, split: str = "train", size: int = 64,
                      seed: int = 0) -> Path:
    """Write ``num_pairs`` ShapesWorld preference pairs (PNGs + ``pairs.jsonl``) into ``out_dir``; the preferred
    image is randomly image 0 or image 1. Returns the path of ``pairs.jsonl``."""
    from PIL import Image

    from visalign.worlds.shapes.mismatch import corrupt
    from visalign.worlds.shapes.prompts import load_split
    from visalign.worlds.shapes.render import render_scene

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = load_split(split)
    rng = numpy_rng(seed)
    lines = []
    for i in range(num_pairs):
        md = items[int(rng.integers(len(items)))]
        _kind, wrong = corrupt(md, rng)
        good = render_scene(md, int(rng.integers(2**31)), size)
        bad = render_scene(wrong, int(rng.integers(2**31)), size)
        flip = bool(rng.integers(2))
        names = []
        for j, img in enumerate((bad, good) if flip else (good, bad)):
            name = f"images/{i:06d}_{j}.png"
            Image.fromarray(img).save(out / name)
            names.append(name)
        lines.append(json.dumps({"caption": md["prompt"], "jpg_0": names[0], "jpg_1": names[1],
                                 "label_0": 0.0 if flip else 1.0}))
    path = out / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m visalign.preference_data",
                                     description="Write a ShapesWorld preference-pair file.")
    sub = parser.add_subparsers(dest="command", required=True)
    shapes = sub.add_parser("shapes", help="pairs of a correct and a one-way-wrong rendering of a prompt")
    shapes.add_argument("out_dir")
    shapes.add_argument("--pairs", type=int, default=512)
    shapes.add_argument("--split", default="train")
    shapes.add_argument("--size", type=int, default=64)
    shapes.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_shapes_pairs(args.out_dir, args.pairs, args.split, args.size, args.seed)
    print(f"wrote {args.pairs} pairs to {path}")


if __name__ == "__main__":
    main()
