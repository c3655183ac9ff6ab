"""Rows and images of data files, read with errors that name the file, the line or row and the key.

Shared by the offline preference data (``preference_data.py``) and the visual question sets (``vqa_data.py``).

* Rows: ``.jsonl`` (one JSON object a line, 1-based line numbers in errors), ``.json`` (a list of objects,
  0-based indices) or ``.parquet`` (0-based rows; needs ``pyarrow``, the ``data`` extra).
* Images: a file path (relative to the data file's folder, or absolute), raw bytes (parquet binary, or a
  ``{"bytes": ..., "path": ...}`` struct as written by Hugging Face ``datasets``' ``Image`` feature), or a base64
  string (optionally a ``data:image/...;base64,`` URI). An ``ImageRef`` is opened when used, so a large set is not
  decoded into memory at load time; nothing but image decoders ever reads the bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visalign.errors import UserError
from visalign.jsonl import read_jsonl


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

    def convert(self, mode: str):  # the PIL call that image consumers (``models.vlm.item_image``) make
        image = self.open()
        return image if mode == "RGB" else image.convert(mode)

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


def read_rows(path: Path, what: str, suffixes: Sequence[str] = (".jsonl", ".ndjson", ".parquet")
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for every record of a data file; ``what`` names the data in errors."""
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        shown = [s for s in suffixes if s != ".ndjson"]  # an alias of .jsonl
        names = ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]
        raise UserError(f"{path}: {what} must be a {names} file")
    if suffix in (".jsonl", ".ndjson"):
        for lineno, row in read_jsonl(path):
            yield f"{path}:{lineno}", row
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{path}: a .json {what} file must hold a list of objects")
        for index, row in enumerate(rows):
            yield f"{path} row {index}", row
    else:
        yield from _parquet_rows(path)


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet files needs pyarrow (pip install 'visalign[data]')") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({err})") from None
    index = 0
    for batch in table.iter_batches():
        for row in batch.to_pylist():
            yield f"{path} row {index}", row
            index += 1


def _base64(text: str) -> bytes | None:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def image_ref(value: Any, at: str, base: Path) -> ImageRef:
    """The ``ImageRef`` of one image value of a row (``at``: its location and key, for errors)."""
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
        try:
            is_file = path.is_file()
        except OSError:  # a name longer than the file system allows: a base64 image, not a path
            is_file = False
        if is_file:
            return ImageRef(path, at)
        data = _base64(value) if len(value) > 64 else None  # a bare base64 string (no short path decodes by chance)
        if data is not None:
            return ImageRef(data, at)
        raise UserError(f"{at}: image file '{value}' not found (relative paths are read from {base})")
    raise UserError(f"{at}: expected an image path, bytes or a base64 string, got {type(value).__name__}")
