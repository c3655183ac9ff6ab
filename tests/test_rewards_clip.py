"""CLIP-family rewards (PickScore, CLIPScore, LAION aesthetic) loaded from tiny transformers CLIP folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reward_fixtures import make_clip_folder, write_aesthetic_head
from visalign.errors import UserError
from visalign.rewards import build_reward
from visalign.rewards._images import CLIP_MEAN, CLIP_STD

PROMPTS = ["a photo of a cat", "red circle", "blue square"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_folder(tmp_path_factory.mktemp("pickscore") / "PickScore_v1", seed=3)


@pytest.fixture(scope="module")
def pickscore(clip_dir: Path):  # type: ignore[no-untyped-def]
    return build_reward("pickscore", checkpoint=str(clip_dir), processor=None)


def _reference(clip_dir: Path, images: torch.Tensor, prompts: list[str]):  # type: ignore[no-untyped-def]
    """transformers' own CLIPModel forward on manually normalised pixels (images already at 32x32)."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tok = CLIPTokenizer.from_pretrained(str(clip_dir))
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tokens = tok(prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     pixel_values=(images - mean) / std)  # fmt: skip


def test_pickscore_matches_transformers_forward(clip_dir: Path, pickscore) -> None:  # type: ignore[no-untyped-def]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = pickscore(images, PROMPTS)
    assert list(out) == ["pickscore"] and out["pickscore"].shape == (3,)
    ref = _reference(clip_dir, images, PROMPTS)
    torch.testing.assert_close(out["pickscore"].detach(), ref.logits_per_image.diag(), rtol=1e-4, atol=1e-4)
    # the loaded weights are the saved ones, not a random re-initialisation
    saved = load_file(str(clip_dir / "model.safetensors"))
    torch.testing.assert_close(pickscore.encoder.model.visual_projection.weight, saved["visual_projection.weight"])


def test_pickscore_determinism_batch_invariance_and_gradients(pickscore) -> None:  # type: ignore[no-untyped-def]
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(1))  # resized + cropped in torch
    full = pickscore(images, PROMPTS)["pickscore"].detach()
    assert torch.equal(full, pickscore(images, PROMPTS)["pickscore"].detach())
    singles = torch.cat([pickscore(images[i : i + 1], PROMPTS[i : i + 1])["pickscore"].detach() for i in range(3)])
    torch.testing.assert_close(full, singles, rtol=1e-5, atol=1e-5)
    assert pickscore.differentiable
    x = images.clone().requires_grad_(True)
    pickscore(x, PROMPTS)["pickscore"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in pickscore.encoder.model.parameters())


def test_clipscore_is_clamped_scaled_cosine(clip_dir: Path) -> None:
    reward = build_reward("clipscore", checkpoint=str(clip_dir))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref = _reference(clip_dir, images, PROMPTS)
    cos = (ref.image_embeds * ref.text_embeds).sum(-1)
    out = reward(images, PROMPTS)["clipscore"].detach()
    torch.testing.assert_close(out, 2.5 * cos.clamp(min=0), rtol=1e-4, atol=1e-5)
    assert (out >= 0).all() and (out <= 2.5).all()


def test_aesthetic_head_on_normalised_image_embedding(tmp_path: Path, clip_dir: Path) -> None:
    head_path = write_aesthetic_head(tmp_path / "aes", in_dim=16, seed=5)
    reward = build_reward("aesthetic", head=str(head_path), clip=str(clip_dir))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = _reference(clip_dir, images, PROMPTS[:2])
    sd = torch.load(head_path)
    h = ref.image_embeds  # already L2-normalised
    for i in (0, 2, 4, 6, 7):  # no activations in the released head
        h = h @ sd[f"layers.{i}.weight"].t() + sd[f"layers.{i}.bias"]
    out = reward(images, ["", ""])["aesthetic"].detach()
    torch.testing.assert_close(out, h.squeeze(-1), rtol=1e-4, atol=1e-5)
    x = images.clone().requires_grad_(True)
    reward(x, ["", ""])["aesthetic"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_aesthetic_errors_name_the_missing_piece(tmp_path: Path, clip_dir: Path) -> None:
    with pytest.raises(UserError, match="pass head=PATH to sac\\+logos\\+ava1-l14-linearMSE.pth"):
        build_reward("aesthetic", clip=str(clip_dir))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no 'sac\\+logos\\+ava1-l14-linearMSE.pth'"):
        build_reward("aesthetic", head=str(tmp_path / "empty"), clip=str(clip_dir))
    sd = torch.load(write_aesthetic_head(tmp_path / "h", in_dim=16))
    del sd["layers.7.bias"]
    torch.save(sd, tmp_path / "h" / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(UserError, match="missing layers.7.bias"):
        build_reward("aesthetic", head=str(tmp_path / "h"), clip=str(clip_dir))
    wrong = write_aesthetic_head(tmp_path / "w", in_dim=24)
    with pytest.raises(UserError, match="head expects 24-d embeddings, CLIP gives 16"):
        build_reward("aesthetic", head=str(wrong), clip=str(clip_dir))


def test_incomplete_or_missing_checkpoints_are_clear_errors(tmp_path: Path, clip_dir: Path) -> None:
    # no weights file
    folder = make_clip_folder(tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights file"):
        build_reward("pickscore", checkpoint=str(folder), processor=None)
    # weights without the visual projection
    folder = make_clip_folder(tmp_path / "partial")
    sd = load_file(str(folder / "model.safetensors"))
    del sd["visual_projection.weight"]
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="incomplete, missing visual_projection.weight"):
        build_reward("pickscore", checkpoint=str(folder), processor=None)
    # no tokenizer anywhere
    folder = make_clip_folder(tmp_path / "notok", tokenizer=False)
    with pytest.raises(UserError, match="no tokenizer files"):
        build_reward("clipscore", checkpoint=str(folder))
    # a tokenizer that loads but is empty (the offline failure mode of from_pretrained)
    (folder / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(UserError, match="empty or unusable"):
        build_reward("clipscore", checkpoint=str(folder))
    # no config.json
    with pytest.raises(UserError, match="has no 'config.json'"):
        build_reward("pickscore", checkpoint=str(tmp_path), processor=None)


def test_hub_id_not_cached_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="'someone/not-cached' is not a local path and is not in the Hugging Face cache"):
        build_reward("pickscore", checkpoint="someone/not-cached")
    with pytest.raises(UserError, match="does not exist"):
        build_reward("pickscore", checkpoint=str(tmp_path / "nowhere" / "deeper" / "x"))


def test_torch_resize_matches_pil_bicubic() -> None:
    """The differentiable preprocessing agrees with torchvision/PIL's Resize(bicubic) + CenterCrop."""
    import numpy as np
    from PIL import Image

    from visalign.rewards._images import resize_center_crop

    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0)),
                                             size=(160, 120), mode="bilinear", align_corners=False)  # fmt: skip
    array = (smooth[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array).resize((56, 74), Image.BICUBIC)  # shorter side 120 -> 56, 160 -> int(74.67)
    top = int(round((74 - 56) / 2))
    ref = torch.from_numpy(np.asarray(pil.crop((0, top, 56, top + 56))).copy()).permute(2, 0, 1).float() / 255
    ours = resize_center_crop(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, 56)[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 8e-3 and (ours - ref).abs().mean() < 3e-3


def test_processor_folder_sets_the_preprocessing(tmp_path: Path, clip_dir: Path) -> None:
    proc = tmp_path / "laion-processor"
    proc.mkdir()
    (proc / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))  # fmt: skip
    for name in ("vocab.json", "merges.txt"):
        (proc / name).write_bytes((clip_dir / name).read_bytes())
    model_only = tmp_path / "weights-only"
    model_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model_only / name).write_bytes((clip_dir / name).read_bytes())
    reward = build_reward("pickscore", checkpoint=str(model_only), processor=str(proc))
    t = reward.encoder.transform
    assert (t.size, t.crop, t.mean, t.std) == (40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(6))
    pixels = (images[:, :, 4:36, 4:36] - 0.5) / 0.25  # no resize needed: shorter side is already 40
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokens = CLIPTokenizer.from_pretrained(str(proc))(PROMPTS[:2], padding="max_length", max_length=77,
                                                      return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        ref = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    torch.testing.assert_close(reward(images, PROMPTS[:2])["pickscore"].detach(), ref.logits_per_image.diag(),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
