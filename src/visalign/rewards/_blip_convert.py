"""Convert ImageReward's ``ImageReward.pt`` (BLIP + MLP head) into transformers BLIP modules.

Key layout of the release (``ImageReward/ImageReward.py``, BLIP's ``models/vit.py`` and ``models/med.py``):

* ``blip.visual_encoder.``: ``cls_token`` [1, 1, D], ``pos_embed`` [1, N+1, D], ``patch_embed.proj.{weight,bias}``,
  ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm`` (LayerNorm eps 1e-6);
* ``blip.text_encoder.``: a BERT with cross-attention, key names identical to transformers' ``BlipTextModel``
  (``embeddings.{word_embeddings, position_embeddings, LayerNorm}``, ``encoder.layer.{i}.{attention,
  crossattention, intermediate, output}...``);
* ``mlp.layers.{0,2,4,6,7}.{weight,bias}``: the reward head;
* ``blip.vision_proj`` / ``blip.text_proj``: unused for the reward.

The text tower's sizes come from ``med_config.json`` (BERT-base: 12 layers, hidden 768, vocab 30524); the
cross-attention width is the ViT width (BLIP sets ``encoder_width = vision_width``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from visalign.errors import UserError

VIT = "blip.visual_encoder."
TEXT = "blip.text_encoder."
HEAD_KEYS = [f"mlp.layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
VIT_TOP = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
VIT_BLOCK = {
    "norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}  # fmt: skip
VIT_HEADS = {768: 12, 1024: 16}  # BLIP ViT-B / ViT-L
MED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
)  # fmt: skip


def _fail(reward: str, path: Path, what: str) -> UserError:
    return UserError(f"reward '{reward}': {path} {what}")


def _missing(reward: str, path: Path, state: dict[str, torch.Tensor], keys: list[str]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise _fail(reward, path, f"is not a complete ImageReward checkpoint, missing {shown}")


def read_med_config(reward: str, path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise _fail(reward, path, f"cannot be read as JSON: {err}") from err
    absent = [f for f in MED_FIELDS[:6] if f not in cfg]
    if absent:
        raise _fail(reward, path, f"lacks {', '.join(absent)}")
    return cfg


def build_vision(reward: str, path: Path, state: dict[str, torch.Tensor], heads: int | None = None):
    """transformers ``BlipVisionModel`` holding the ``blip.visual_encoder`` weights."""
    from transformers import BlipVisionConfig, BlipVisionModel

    _missing(reward, path, state, [VIT + k for k in VIT_TOP])
    n = len({k[len(VIT + "blocks.") :].split(".")[0] for k in state if k.startswith(VIT + "blocks.")})
    if n == 0:
        raise _fail(reward, path, "has no blip.visual_encoder.blocks")
    need = [f"{VIT}blocks.{i}.{src}.{p}" for i in range(n) for src in VIT_BLOCK for p in ("weight", "bias")]
    _missing(reward, path, state, need)
    conv = state[VIT + "patch_embed.proj.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((state[VIT + "pos_embed"].shape[1] - 1) ** 0.5))
    config = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state[VIT + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=n,
        num_attention_heads=heads or VIT_HEADS.get(width, max(1, width // 64)),
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    target = {
        "embeddings.class_embedding": state[VIT + "cls_token"],
        "embeddings.position_embedding": state[VIT + "pos_embed"],
        "embeddings.patch_embedding.weight": conv,
        "embeddings.patch_embedding.bias": state[VIT + "patch_embed.proj.bias"],
        "post_layernorm.weight": state[VIT + "norm.weight"],
        "post_layernorm.bias": state[VIT + "norm.bias"],
    }
    for i in range(n):
        for src, dst in VIT_BLOCK.items():
            for p in ("weight", "bias"):
                target[f"encoder.layers.{i}.{dst}.{p}"] = state[f"{VIT}blocks.{i}.{src}.{p}"]
    model = BlipVisionModel(config)
    _load_exact(reward, path, model, target, "blip.visual_encoder")
    return model


def build_text(reward: str, path: Path, state: dict[str, torch.Tensor], med: dict[str, Any], encoder_width: int):
    """transformers ``BlipTextModel`` (no pooler) holding the ``blip.text_encoder`` weights."""
    from transformers import BlipTextConfig, BlipTextModel

    config = BlipTextConfig(
        **{k: med[k] for k in MED_FIELDS if k in med}, encoder_hidden_size=encoder_width, is_decoder=True,
        bos_token_id=None, eos_token_id=None, sep_token_id=None, pad_token_id=med.get("pad_token_id", 0),
    )
    model = BlipTextModel(config, add_pooling_layer=False)
    target = {k[len(TEXT) :]: v for k, v in state.items() if k.startswith(TEXT) and not k.endswith("position_ids")}
    if not target:
        raise _fail(reward, path, "has no blip.text_encoder weights")
    _load_exact(reward, path, model, target, "blip.text_encoder")
    return model


def build_head(reward: str, path: Path, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from visalign.rewards.aesthetic import AestheticMLP  # the same 5-layer head as the aesthetic predictor

    _missing(reward, path, state, HEAD_KEYS)
    head = AestheticMLP(state["mlp.layers.0.weight"].shape[1])
    _load_exact(reward, path, head, {k[len("mlp.") :]: v for k, v in state.items() if k.startswith("mlp.")}, "mlp")
    return head


def _load_exact(reward: str, path: Path, model: torch.nn.Module, target: dict[str, torch.Tensor], part: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(target))
    unexpected = sorted(set(target) - set(expected))
    if missing or unexpected:
        what = f"missing {part}.{missing[0]}" if missing else f"unexpected {part}.{unexpected[0]}"
        n = len(missing) + len(unexpected)
        raise _fail(reward, path, f"does not match the {part} layout ({what}; {n} keys differ)")
    bad = [k for k, v in target.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise _fail(
            reward, path, f"{part}.{bad[0]} has shape {tuple(target[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}"
        )
    model.load_state_dict({k: v.float() for k, v in target.items()}, strict=True)
