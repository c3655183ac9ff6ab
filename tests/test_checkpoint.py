"""Checkpoints: round trip, keep-last-N, atomic layout, RNG restore, clear errors on corruption / incompatibility;
nothing in a checkpoint folder can run code when it is read; a damaged latest checkpoint falls back to an older one."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from visalign.checkpoint import (
    CorruptCheckpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_valid,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from visalign.errors import UserError

FP = {"model": "m", "trainable": "[['w', [2]]]"}


def _state():
    return {"model": {"w": torch.arange(4.0)}, "rng": rng_state(), "data": {"epoch": 1, "pos": 3}}


def test_round_trip_keep_last_and_no_temp_left(tmp_path):
    for it in (1, 2, 3, 4):
        save_checkpoint(tmp_path, it, _state(), FP, keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["iter_000003", "iter_000004"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert resolve_resume(tmp_path, "auto").name == "iter_000004"
    state = load_checkpoint(resolve_resume(tmp_path, "auto"), FP)
    assert state["iteration"] == 4 and torch.equal(state["model"]["w"], torch.arange(4.0))
    assert state["data"] == {"epoch": 1, "pos": 3}


def test_rng_states_restore_exactly():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, _state(), FP)
    data = bytearray((path / "state.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "state.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupted checkpoint"):
        load_checkpoint(path, FP)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted checkpoint metadata"):
        load_checkpoint(path, FP)
    (path / "meta.json").unlink()
    with pytest.raises(UserError, match="not a checkpoint"):
        load_checkpoint(path, FP)


def test_incompatible_checkpoint_names_the_difference(tmp_path):
    path = save_checkpoint(tmp_path, 1, _state(), FP)
    with pytest.raises(UserError, match="incompatible checkpoint: 'trainable'"):
        load_checkpoint(path, {**FP, "trainable": "[['w', [3]]]"})
    with pytest.raises(UserError, match="checkpoint folder not found"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
    assert resolve_resume(tmp_path / "empty", "auto") is None


class _RunsCode:
    """Unpickling this calls ``os.system``: what a crafted checkpoint does to a loader that unpickles."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_folder(folder, state_name, format_version, marker):
    """A checkpoint folder whose state file is a pickle that runs a shell command, with a matching checksum."""
    folder.mkdir(parents=True)
    data = pickle.dumps({"model": _RunsCode(marker)})
    (folder / state_name).write_bytes(data)
    meta = {"format_version": format_version, "iteration": 1, "fingerprint": FP,
            "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("state_name, version", [("state.pt", 1), ("state.safetensors", 2)])
def test_a_crafted_checkpoint_cannot_run_code(tmp_path, state_name, version):
    marker = tmp_path / "code-ran"
    folder = _crafted_folder(tmp_path / "checkpoints" / "iter_000001", state_name, version, marker)
    with pytest.raises(UserError) as info:
        load_checkpoint(folder, FP)
    assert not marker.exists(), "loading a checkpoint executed code"
    assert str(folder) in str(info.value)
    if version == 1:  # the pickle of format 1 is refused by name, never opened
        assert "pickle" in str(info.value)


def test_state_file_is_safetensors_with_a_json_document(tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(tmp_path, 1, _state(), FP, config={"seed": 3})
    with safe_open(str(path / "state.safetensors"), "pt") as f:
        assert "visalign-state" in f.metadata() and "/model/w" in f.keys()
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "state.safetensors"]
    assert load_checkpoint(path, FP)["config"] == {"seed": 3}


def test_the_same_state_writes_the_same_bytes(tmp_path):
    a = save_checkpoint(tmp_path / "a", 1, _state(), FP) / "state.safetensors"
    b = save_checkpoint(tmp_path / "b", 1, _state(), FP) / "state.safetensors"
    assert a.read_bytes() == b.read_bytes()


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    for it in (1, 2, 3):
        save_checkpoint(tmp_path, it, _state(), FP, keep_last=3)
    newest = tmp_path / "checkpoints" / "iter_000003" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])
    path, state, skipped = load_latest_valid(tmp_path, FP)
    assert path.name == "iter_000002" and state["iteration"] == 2
    assert len(skipped) == 1 and "iter_000003" in skipped[0] and "corrupted" in skipped[0]
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(newest.parent, FP)
    # another run's checkpoint is not "damaged": no fallback past it
    with pytest.raises(UserError, match="incompatible checkpoint"):
        load_latest_valid(tmp_path, {**FP, "model": "other"})
    for it in (1, 2):
        (tmp_path / "checkpoints" / f"iter_{it:06d}" / "meta.json").write_text("{")
    with pytest.raises(UserError, match="every checkpoint is damaged"):
        load_latest_valid(tmp_path, FP)


def test_temporary_folders_of_a_killed_write_are_removed(tmp_path):
    save_checkpoint(tmp_path, 1, _state(), FP)
    left = tmp_path / "checkpoints" / ".tmp-iter_000002-99999"
    left.mkdir()
    (left / "state.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, 2, _state(), FP)
    assert not left.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000001", "iter_000002"]


def test_a_full_disk_is_one_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    import errno

    save_checkpoint(tmp_path, 1, _state(), FP)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device.*iter_000001|earlier checkpoints"):
        save_checkpoint(tmp_path, 2, _state(), FP)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert load_checkpoint(tmp_path / "checkpoints" / "iter_000001", FP)["iteration"] == 1


def test_pretraining_checkpoints_are_safetensors_and_old_pickles_are_refused(tmp_path):
    from visalign.pretrain.checkpoint import load_checkpoint as load_stage
    from visalign.pretrain.checkpoint import save_checkpoint as save_stage

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "model": model.state_dict(), "optim": opt.state_dict(), "wall": 1.5, "ema": None}
    path = tmp_path / "checkpoints" / "vae.safetensors"
    save_stage(path, state)
    back = load_stage(path)
    assert back["step"] == 7 and back["wall"] == 1.5 and back["ema"] is None
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(back["optim"])  # an optimizer state (int keys, tuples, tensors) comes back loadable
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    marker = tmp_path / "code-ran"
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "vae.pt").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UserError, match="vae.pt: a pickled checkpoint"):
        load_stage(tmp_path / "old" / "checkpoints" / "vae.safetensors")
    assert not marker.exists()
    assert load_stage(tmp_path / "none.safetensors") is None
    path.write_bytes(pickle.dumps(_RunsCode(marker)))  # a pickle under the new name is not a state file
    with pytest.raises(UserError, match="vae.safetensors: not a readable state file"):
        load_stage(path)
    assert not marker.exists()
