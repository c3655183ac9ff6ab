"""Resumable state on disk that cannot execute code: tensors in safetensors, everything else in JSON.

A training or pretraining state is a nest of dicts, lists and tuples whose leaves are tensors, numbers, strings,
booleans and ``None`` (weights, optimizer moments and step counts, learning-rate schedule, RNG states, data
position). ``save_state`` writes it as ONE safetensors file: the tensors as its tensors, the rest of the nest as a
JSON string in the file's metadata, where each tensor is replaced by a reference to its name. Reading it back
parses a safetensors header and a JSON document: unlike a pickle (``torch.load(weights_only=False)``), neither can
run code, whoever wrote the file. The values come back bit for bit (safetensors stores raw bytes; Python's JSON
writes the shortest repr of a float, which reads back to the same float).

JSON cannot say everything a state needs, so four small markers carry what it cannot: ``{"$tensor": name}``,
``{"$tuple": [...]}`` (a tuple stays a tuple), ``{"$items": [[key, value], ...]}`` (a dict whose keys are not all
strings, such as an optimizer's ``{0: {...}}``) and ``{"$float": "nan" | "inf" | "-inf"}``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from visalign.errors import UserError

FORMAT = "visalign-state"
VERSION = "1"
_MARKERS = ("$tensor", "$tuple", "$items", "$float", "$numpy")


class _Encoder:
    """Walks a state, moving its tensors into ``tensors`` and returning the JSON-able rest."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[tuple[int, int]] = set()

    def tensor(self, value: torch.Tensor, path: str) -> str:
        name = path or "_"
        while name in self.tensors:  # paths are unique unless a key itself contains "/"
            name += "'"
        t = value.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (0, len(self.tensors))
        if t.numel() and key in self._storages:  # safetensors refuses tensors that share memory
            t = t.clone()
        self._storages.add(key)
        self.tensors[name] = t
        return name

    def encode(self, value: Any, path: str = "") -> Any:
        if isinstance(value, torch.Tensor):
            return {"$tensor": self.tensor(value, path)}
        if isinstance(value, np.ndarray):
            return {"$numpy": self.tensor(torch.from_numpy(np.ascontiguousarray(value)), path)}
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in value):
                return {k: self.encode(v, f"{path}/{k}") for k, v in value.items()}
            return {"$items": [[self.encode(k), self.encode(v, f"{path}/{k}")] for k, v in value.items()]}
        raise TypeError(f"cannot store a {type(value).__name__} at '{path or '/'}' in a checkpoint")


def encode_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, tensors by name) for ``state``."""
    encoder = _Encoder()
    tree = encoder.encode(state)
    return tree, encoder.tensors


def decode_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``encode_state``; a reference to a missing tensor raises ``KeyError``."""
    if isinstance(tree, list):
        return [decode_state(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        (marker, inner), = tree.items()
        if marker == "$tensor":
            return tensors[inner]
        if marker == "$numpy":
            return tensors[inner].numpy()
        if marker == "$tuple":
            return tuple(decode_state(v, tensors) for v in inner)
        if marker == "$items":
            return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in inner}
        if marker == "$float":
            return float(inner)
    return {k: decode_state(v, tensors) for k, v in tree.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def state_to_bytes(state: Any) -> bytes:
    """``state`` as the bytes of one safetensors file (deterministic: same state, same bytes)."""
    tree, tensors = encode_state(state)
    # one metadata key: safetensors writes a metadata dict in hash order, which differs between calls
    document = {"version": VERSION, "tree": tree}
    metadata = {FORMAT: json.dumps(document, sort_keys=True, allow_nan=False)}
    return save_safetensors_bytes(dict(sorted(tensors.items())), metadata=metadata)


def state_from_bytes(data: bytes, source: str | Path) -> Any:
    """Parse what ``state_to_bytes`` wrote; anything else is a ``UserError`` naming ``source``."""
    try:
        tensors = load_safetensors_bytes(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{source}: not a readable state file ({type(err).__name__}: {err})") from None
    if FORMAT not in metadata:
        raise UserError(f"{source}: not a visalign state file (no '{FORMAT}' entry in its metadata)")
    try:
        document = json.loads(metadata[FORMAT])
        if not isinstance(document, dict) or document.get("version") != VERSION:
            version = document.get("version") if isinstance(document, dict) else None
            raise UserError(f"{source}: state format version {version!r} is not {VERSION!r}")
        return decode_state(document["tree"], tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{source}: corrupted state ({type(err).__name__}: {err})") from None


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (safetensors' torch ``load`` does not return it)."""
    size = int.from_bytes(data[:8], "little")
    if not 0 < size <= len(data) - 8:
        raise ValueError("header size out of range")
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return metadata if isinstance(metadata, dict) else {}


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsynced, then renamed: a reader
    (or a run killed at any moment) sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_state(path: str | Path, state: Any) -> None:
    """``state`` as one safetensors file at ``path``, atomically."""
    write_atomic(path, state_to_bytes(state))


def load_state(path: str | Path) -> Any:
    """The state saved at ``path`` by ``save_state``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    return state_from_bytes(data, path)
