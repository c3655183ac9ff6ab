"""ImageReward from a checkpoint in the release's layout (``ImageReward.pt`` + ``med_config.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reward_fixtures import imagereward_reference, write_imagereward
from visalign.errors import UserError
from visalign.rewards import build_reward
from visalign.rewards._images import clip_preprocess

PROMPTS = ["a photo of a cat", "red circle", "blue square"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("ir")
    write_imagereward(root / "ImageReward", root / "bert", seed=11)
    reward = build_reward("imagereward", checkpoint=str(root / "ImageReward"), tokenizer=str(root / "bert"),
                          vision_heads=4)  # fmt: skip
    return root, reward


def test_weights_are_the_checkpoint_tensors(setup) -> None:  # type: ignore[no-untyped-def]
    root, reward = setup
    sd = torch.load(root / "ImageReward" / "ImageReward.pt")
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    pairs = [
        (reward.vision.embeddings.class_embedding, sd[v + "cls_token"]),
        (reward.vision.embeddings.position_embedding, sd[v + "pos_embed"]),
        (reward.vision.encoder.layers[1].self_attn.qkv.weight, sd[v + "blocks.1.attn.qkv.weight"]),
        (reward.vision.encoder.layers[0].self_attn.projection.bias, sd[v + "blocks.0.attn.proj.bias"]),
        (reward.vision.post_layernorm.weight, sd[v + "norm.weight"]),
        (reward.text.encoder.layer[1].crossattention.self.key.weight, sd[t + "encoder.layer.1.crossattention.self.key.weight"]),
        (reward.text.embeddings.word_embeddings.weight, sd[t + "embeddings.word_embeddings.weight"]),
        (reward.head.layers[7].weight, sd["mlp.layers.7.weight"]),
    ]  # fmt: skip
    for loaded, saved in pairs:
        assert torch.equal(loaded.detach(), saved)
    assert reward.vision.config.layer_norm_eps == 1e-6  # BLIP's ViT, not the transformers default
    # BLIP's tokenizer: [CLS] ... [SEP], the two extra tokens appended after BERT's vocabulary
    ids = reward.tokenizer(["a photo of a cat"])["input_ids"][0]
    assert ids[0] == reward.tokenizer.cls_token_id and ids[-1] == reward.tokenizer.sep_token_id
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(reward.tokenizer) - 2, len(reward.tokenizer) - 1]


def test_score_equals_blip_forward_written_from_the_checkpoint(setup) -> None:  # type: ignore[no-untyped-def]
    root, reward = setup
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = reward(images, PROMPTS)["imagereward"].detach()
    sd = torch.load(root / "ImageReward" / "ImageReward.pt")
    tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    expected = imagereward_reference(sd, clip_preprocess(images, 32), tokens["input_ids"], tokens["attention_mask"],
                                     v_heads=4, t_heads=4)  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert out.std() > 1e-3  # not a constant: the weights and the image matter
    other = reward(torch.zeros(1, 3, 32, 32), PROMPTS[:1])["imagereward"]
    assert not torch.allclose(other, out[:1])


def test_batch_invariance_determinism_gradients(setup) -> None:  # type: ignore[no-untyped-def]
    _root, reward = setup
    images = torch.rand(3, 3, 36, 44, generator=torch.Generator().manual_seed(1))
    full = reward(images, PROMPTS)["imagereward"].detach()
    assert torch.equal(full, reward(images, PROMPTS)["imagereward"].detach())
    singles = torch.cat([reward(images[i : i + 1], PROMPTS[i : i + 1])["imagereward"].detach() for i in range(3)])
    torch.testing.assert_close(full, singles, rtol=1e-5, atol=1e-5)
    x = images.clone().requires_grad_(True)
    reward(x, PROMPTS)["imagereward"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_broken_checkpoints_name_the_missing_piece(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _reward = setup
    bert = str(root / "bert")
    write_imagereward(tmp_path / "a", tmp_path / "bert", drop=("mlp.layers.4.weight",))
    with pytest.raises(UserError, match="missing mlp.layers.4.weight"):
        build_reward("imagereward", checkpoint=str(tmp_path / "a"), tokenizer=bert, vision_heads=4)
    write_imagereward(tmp_path / "b", tmp_path / "bert", drop=("blip.text_encoder.encoder.layer.0.crossattention.self.key.bias",))
    with pytest.raises(UserError, match="missing blip.text_encoder.encoder.layer.0.crossattention.self.key.bias"):
        build_reward("imagereward", checkpoint=str(tmp_path / "b"), tokenizer=bert, vision_heads=4)
    write_imagereward(tmp_path / "c", tmp_path / "bert")
    (tmp_path / "c" / "med_config.json").unlink()
    with pytest.raises(UserError, match="has no 'med_config.json'"):
        build_reward("imagereward", checkpoint=str(tmp_path / "c"), tokenizer=bert, vision_heads=4)
    write_imagereward(tmp_path / "d", tmp_path / "bert")
    med = json.loads((tmp_path / "d" / "med_config.json").read_text())
    med["num_hidden_layers"] = 3  # disagrees with the weights
    (tmp_path / "d" / "med_config.json").write_text(json.dumps(med))
    with pytest.raises(UserError, match="missing blip.text_encoder.encoder.layer.2"):
        build_reward("imagereward", checkpoint=str(tmp_path / "d"), tokenizer=bert, vision_heads=4)
    # the .pt file itself may be given; med_config.json is read next to it
    direct = build_reward("imagereward", checkpoint=str(root / "ImageReward" / "ImageReward.pt"), tokenizer=bert,
                          vision_heads=4)  # fmt: skip
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(direct(images, ["a cat"])["imagereward"], _reward(images, ["a cat"])["imagereward"])
    with pytest.raises(UserError, match="has no 'vocab.txt'"):
        build_reward("imagereward", checkpoint=str(root / "ImageReward"), tokenizer=str(tmp_path), vision_heads=4)
