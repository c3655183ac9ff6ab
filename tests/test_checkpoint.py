"""Checkpoints: round trip, keep-last-N, atomic layout, RNG restore, clear errors on corruption / incompatibility."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from visalign.checkpoint import (
    list_checkpoints,
    load_checkpoint,
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
    data = bytearray((path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "state.pt").write_bytes(bytes(data))
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
