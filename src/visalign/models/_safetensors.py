"""Byte-reproducible safetensors files.

The safetensors writer keeps a file's ``__metadata__`` in a hash map whose order changes from process to process,
so the same weights exported twice differ in their header as soon as the metadata has two keys (a LoRA file holds
``format`` and ``lora_adapter_metadata``). ``canonicalize`` rewrites such a header with its metadata keys sorted;
the tensors, their order and their bytes are left as written.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

_ALIGN = 8  # the format pads its JSON header with spaces to a multiple of 8 bytes


def _read_header(file: Path) -> tuple[int, dict[str, Any]]:
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return size, json.loads(f.read(size))


def _encode_header(header: dict[str, Any]) -> bytes:
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % _ALIGN)


def canonicalize(file: str | Path) -> bool:
    """Sort the ``__metadata__`` keys of a safetensors file in place; return whether the file was rewritten.

    Every header with two or more metadata keys is rewritten, sorted or not, so that the bytes never depend on
    how the writer happened to format it."""
    file = Path(file)
    size, header = _read_header(file)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or len(metadata) < 2:  # one key or none: the writer's order is fixed
        return False
    rest = {k: v for k, v in header.items() if k != "__metadata__"}
    encoded = _encode_header({"__metadata__": dict(sorted(metadata.items())), **rest})
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    with open(file, "rb") as src, open(tmp, "wb") as dst:
        src.seek(8 + size)  # the tensor data: its offsets are relative to the end of the header, so it moves as is
        dst.write(struct.pack("<Q", len(encoded)) + encoded)
        shutil.copyfileobj(src, dst)
    os.replace(tmp, file)
    return True


def canonicalize_folder(folder: str | Path) -> None:
    """``canonicalize`` every ``*.safetensors`` file under ``folder``."""
    for file in sorted(Path(folder).rglob("*.safetensors")):
        canonicalize(file)
