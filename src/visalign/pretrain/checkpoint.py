"""Atomic pretraining checkpoints: the resumable state of each stage and the reflow pair caches.

A checkpoint is one safetensors file (``visalign.state_io``: tensors plus a JSON document, nothing that can run
code when read), written to a temporary file in the same folder and renamed over the old one, so a run killed at
any moment leaves either the previous checkpoint or the new one, never a torn file. A pickled ``.pt`` file of an
earlier release beside it is refused with a clear message, never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visalign.errors import UserError
from visalign.state_io import load_state, save_state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``state`` to the safetensors file ``path``, atomically."""
    save_state(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none."""
    path = Path(path)
    pickled = path.with_suffix(".pt")
    if not path.is_file():
        if pickled.is_file():
            raise UserError(f"{pickled}: a pickled checkpoint of an earlier release; visalign no longer loads "
                            f"pickles because loading one can run code: delete it to restart this stage")
        return None
    state = load_state(path)
    if not isinstance(state, dict):
        raise UserError(f"{path}: corrupted checkpoint (the state is not a mapping)")
    return state
