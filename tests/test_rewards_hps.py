"""HPSv2 / v2.1 from an open_clip-format state dict, checked against an independent open_clip forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reward_fixtures import (
    make_openclip_state,
    openclip_reference,
    openclip_tokenize,
    write_clip_tokenizer,
    write_hps,
)
from visalign.errors import UserError
from visalign.rewards import build_reward
from visalign.rewards._images import clip_preprocess

PROMPTS = ["a photo of a cat", "two red circles", "a blue square"]
HEADS = {"vision_heads": 4, "text_heads": 4}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hps")
    state = make_openclip_state(seed=7)
    write_hps(root / "HPSv2", state)
    write_clip_tokenizer(root / "tokenizer")
    reward = build_reward("hpsv2", checkpoint=str(root / "HPSv2"), tokenizer=str(root / "tokenizer"), **HEADS)
    return root, state, reward


def test_hps_equals_open_clip_forward(setup) -> None:  # type: ignore[no-untyped-def]
    root, state, reward = setup
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = openclip_tokenize(PROMPTS, root / "tokenizer" / "vocab.json")
    image_f, text_f = openclip_reference(state, clip_preprocess(images, 32), ids, heads=4, layers=2)
    out = reward(images, PROMPTS)
    assert list(out) == ["hpsv2"]
    torch.testing.assert_close(out["hpsv2"], (image_f * text_f).sum(-1), rtol=1e-4, atol=1e-5)
    assert out["hpsv2"].abs().max() <= 1.0


def test_hps_batch_invariance_determinism_gradients(setup) -> None:  # type: ignore[no-untyped-def]
    _root, _state, reward = setup
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    full = reward(images, PROMPTS)["hpsv2"]
    assert torch.equal(full, reward(images, PROMPTS)["hpsv2"])
    singles = torch.cat([reward(images[i : i + 1], PROMPTS[i : i + 1])["hpsv2"] for i in range(3)])
    torch.testing.assert_close(full, singles, rtol=1e-5, atol=1e-6)
    x = images.clone().requires_grad_(True)
    reward(x, PROMPTS)["hpsv2"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hps_v21_uses_its_own_file(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, state, _reward = setup
    with pytest.raises(UserError, match="has no 'HPS_v2.1_compressed.pt'"):
        build_reward("hpsv2.1", checkpoint=str(root / "HPSv2"), tokenizer=str(root / "tokenizer"), **HEADS)
    write_hps(tmp_path, state, "HPS_v2.1_compressed.pt")
    reward = build_reward("hpsv2.1", checkpoint=str(tmp_path), tokenizer=str(root / "tokenizer"), **HEADS)
    assert list(reward(torch.rand(1, 3, 32, 32), ["a cat"])) == ["hpsv2.1"]


def test_hps_broken_checkpoints(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, state, _reward = setup
    tok = str(root / "tokenizer")
    partial = {k: v for k, v in state.items() if k != "visual.transformer.resblocks.1.attn.in_proj_weight"}
    write_hps(tmp_path / "a", partial)
    with pytest.raises(UserError, match="missing visual.transformer.resblocks.1.attn.in_proj_weight"):
        build_reward("hpsv2", checkpoint=str(tmp_path / "a"), tokenizer=tok, **HEADS)
    extra = dict(state, **{"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)})
    write_hps(tmp_path / "b", extra)
    with pytest.raises(UserError, match="does not map.*ls_1.gamma"):
        build_reward("hpsv2", checkpoint=str(tmp_path / "b"), tokenizer=tok, **HEADS)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "HPS_v2_compressed.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        build_reward("hpsv2", checkpoint=str(tmp_path / "c"), tokenizer=tok, **HEADS)
