"""Atomic pretraining checkpoints and small run-directory helpers.

A checkpoint is one safetensors file (``visalign.state_io``: tensors plus a JSON document, nothing that can run
code when read), written to a temporary file in the same folder and renamed over the old one, so a run killed at
any moment leaves either the previous checkpoint or the new one, never a torn file. A pickled ``.pt`` file of an
earlier release beside it is refused with a clear message, never loaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
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


def save_module_folder(module: Any, out_dir: str | Path) -> Path:
    """``module.save_pretrained`` into ``out_dir`` atomically (temporary folder, then rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is shared like any other
    try:
        module.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_jsonl(path: str | Path, key: str, last: int) -> None:
    """Drop records with ``record[key] > last`` (lines written after the checkpoint a run resumes from)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get(key, 0) <= last]
    path.write_text("".join(ln + "\n" for ln in keep))
