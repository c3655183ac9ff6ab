"""Convert an open_clip CLIP state dict (e.g. HPSv2's ViT-H-14) into a transformers ``CLIPModel``.

open_clip key layout (``open_clip/model.py`` / ``transformer.py``, non-custom text tower):

* image tower ``visual.``: ``conv1.weight`` (patch embedding, no bias), ``class_embedding`` [W],
  ``positional_embedding`` [N+1, W], ``ln_pre``, ``transformer.resblocks.{i}.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj`` [W, D] (x @ proj);
* text tower at the top level: ``token_embedding.weight``, ``positional_embedding`` [L, W],
  ``transformer.resblocks.{i}...`` (same block layout, causal), ``ln_final``, ``text_projection`` [W, D];
* ``logit_scale``.

transformers keeps q/k/v separate (``in_proj`` is split in three) and stores projections as ``Linear``
weights (the transpose of open_clip's ``proj`` matrices). Heads cannot be read from the tensors: they come
from the known architectures (ViT-H-14: 16 vision heads of width 80) or the caller.
"""

from __future__ import annotations

from pathlib import Path

import torch

from visalign.errors import UserError

TOP_KEYS = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_pre.weight",
    "visual.ln_post.weight",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
    "logit_scale",
)
BLOCK_KEYS = (
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip

# vision width -> heads for the released open_clip ViTs (ViT-B: 12, ViT-L: 16, ViT-H: 16 of width 80, ViT-g: 16)
KNOWN_VISION_HEADS = {768: 12, 1024: 16, 1280: 16, 1408: 16}

# the two towers, vision then text: (open_clip block prefix, transformers layer prefix)
TOWERS = (
    ("visual.transformer.resblocks", "vision_model.encoder.layers"),
    ("transformer.resblocks", "text_model.encoder.layers"),
)
# layer norms outside the blocks: open_clip prefix -> transformers prefix
LAYER_NORMS = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
               "ln_final": "text_model.final_layer_norm"}  # fmt: skip
# per block: open_clip key -> transformers key, for every weight that moves unchanged (in_proj is split instead)
BLOCK_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}  # fmt: skip


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _missing(reward: str, path: Path, keys: list[str]) -> None:
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise UserError(f"reward '{reward}': {path} is not a complete open_clip CLIP state dict, missing {shown}")


def _check_layout(reward: str, path: Path, state: dict[str, torch.Tensor]) -> tuple[int, int, list[str]]:
    """(vision blocks, text blocks, every block key) of a complete open_clip state; else a ``UserError``."""
    _missing(reward, path, [k for k in TOP_KEYS if k not in state])
    n_vis, n_txt = (_count_blocks(state, f"{src}.") for src, _ in TOWERS)
    need = [
        f"{src}.{i}.{key}"
        for (src, _), n in zip(TOWERS, (n_vis, n_txt), strict=True)
        for i in range(n)
        for key in BLOCK_KEYS
    ]
    _missing(reward, path, [k for k in need if k not in state])
    if n_vis == 0 or n_txt == 0:
        raise UserError(f"reward '{reward}': {path} has no transformer blocks (visual: {n_vis}, text: {n_txt})")
    return n_vis, n_txt, need


def _check_all_mapped(reward: str, path: Path, state: dict[str, torch.Tensor], need: list[str]) -> None:
    """Refuse keys the conversion would leave behind (the causal attention mask is rebuilt by transformers)."""
    used = {k for k in state if k.endswith("attn_mask")} | set(TOP_KEYS) | set(need)
    used |= {f"{src}.bias" for src in LAYER_NORMS}
    unknown = sorted(set(state) - used)
    if unknown:  # e.g. layer scale (ls_1.gamma) or attention pooling: silently dropping them would be wrong
        raise UserError(f"reward '{reward}': {path} has open_clip keys this converter does not map: {unknown[:5]}")


def _clip_config(
    state: dict[str, torch.Tensor], n_vis: int, n_txt: int, vision_heads: int | None, text_heads: int | None,
    eos_token_id: int, hidden_act: str,
):  # fmt: skip
    """The ``CLIPConfig`` the tensors imply; the head counts (which no tensor shows) from the caller or the
    known architectures."""
    from transformers import CLIPConfig

    conv = state["visual.conv1.weight"]
    v_width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    t_width = state["token_embedding.weight"].shape[1]
    embed_dim = state["visual.proj"].shape[1]
    return CLIPConfig(
        text_config={
            "vocab_size": state["token_embedding.weight"].shape[0],
            "hidden_size": t_width,
            "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": n_txt,
            "num_attention_heads": text_heads or max(1, t_width // 64),
            "max_position_embeddings": state["positional_embedding"].shape[0],
            "hidden_act": hidden_act,
            "eos_token_id": eos_token_id,
            "bos_token_id": None,
            "pad_token_id": None,
            "projection_dim": embed_dim,
        },
        vision_config={
            "hidden_size": v_width,
            "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": n_vis,
            "num_attention_heads": vision_heads or KNOWN_VISION_HEADS.get(v_width, max(1, v_width // 64)),
            "image_size": grid * patch,
            "patch_size": patch,
            "hidden_act": hidden_act,
            "projection_dim": embed_dim,
        },
        projection_dim=embed_dim,
    )


def _block(state: dict[str, torch.Tensor], src: str) -> dict[str, torch.Tensor]:
    """One transformer block's weights under transformers' names (relative to the layer), q / k / v split."""
    q, k, v = state[src + "attn.in_proj_weight"].chunk(3, dim=0)
    qb, kb, vb = state[src + "attn.in_proj_bias"].chunk(3, dim=0)
    split = {
        "self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
        "self_attn.q_proj.bias": qb, "self_attn.k_proj.bias": kb, "self_attn.v_proj.bias": vb,
    }  # fmt: skip
    return {**split, **{dst: state[src + key] for key, dst in BLOCK_RENAMES.items()}}


def _target_state(state: dict[str, torch.Tensor], n_vis: int, n_txt: int) -> dict[str, torch.Tensor]:
    """The transformers ``CLIPModel`` state dict holding the open_clip weights (projections transposed)."""
    target: dict[str, torch.Tensor] = {
        "logit_scale": state["logit_scale"].reshape(()),
        "visual_projection.weight": state["visual.proj"].t(),
        "text_projection.weight": state["text_projection"].t(),
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
    }
    for src, dst in LAYER_NORMS.items():
        target[f"{dst}.weight"] = state[f"{src}.weight"]
        target[f"{dst}.bias"] = state[f"{src}.bias"]
    for (src, dst), n in zip(TOWERS, (n_vis, n_txt), strict=True):
        for i in range(n):
            target.update({f"{dst}.{i}.{key}": value for key, value in _block(state, f"{src}.{i}.").items()})
    return target


def convert_openclip_state_dict(
    reward: str,
    path: Path,
    state: dict[str, torch.Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    eos_token_id: int = 49407,
    hidden_act: str = "gelu",
):
    """Build a transformers ``CLIPModel`` holding exactly the weights of the open_clip ``state``.

    ``hidden_act``: ``"gelu"`` for LAION / HPSv2 models, ``"quick_gelu"`` for OpenAI's released weights.
    """
    from transformers import CLIPModel

    n_vis, n_txt, need = _check_layout(reward, path, state)
    config = _clip_config(state, n_vis, n_txt, vision_heads, text_heads, eos_token_id, hidden_act)
    target = _target_state(state, n_vis, n_txt)
    _check_all_mapped(reward, path, state, need)
    model = CLIPModel(config)
    missing = sorted(set(model.state_dict()) - set(target))
    if missing:  # a layout this converter does not know (e.g. layer-scale or attention pooling)
        raise UserError(f"reward '{reward}': cannot map {path} onto CLIP, no source for {missing[:5]}")
    model.load_state_dict({k: v.float() for k, v in target.items()}, strict=True)
    return model
