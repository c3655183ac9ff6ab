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
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visalign.data_files import ImageRef, image_ref, read_rows
from visalign.errors import UserError
from visalign.seeding import numpy_rng

if TYPE_CHECKING:
    from visalign.models.base import Generator

PAIR_KEYS = ("caption", "jpg_0", "jpg_1", "label_0")
LABELLED_KEYS = ("caption", "image", "label")


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


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    return read_rows(path, "preference data")


def _image(row: dict[str, Any], key: str, loc: str, base: Path, expected: Sequence[str]) -> ImageRef:
    return image_ref(_get(row, key, loc, expected), f"{loc} [{key}]", base)


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
