"""LoRA through peft on a diffusers denoiser: add adapters, fold them into plain weights, export them."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from visalign.models.base import FinetuneSpec

LORA_FILE = "pytorch_lora_weights.safetensors"  # the file diffusers' save_lora_weights writes


def add_lora(denoiser: nn.Module, spec: FinetuneSpec) -> None:
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, _ in denoiser.named_modules()} | {
        ".".join(name.split(".")[-2:]) for name, _ in denoiser.named_modules()
    }
    unknown = [m for m in spec.target_modules if m not in present]
    if unknown:
        from visalign.errors import UserError

        raise UserError(f"lora target modules {unknown} not found in {type(denoiser).__name__}")
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        lora_dropout=spec.dropout,
        init_lora_weights="gaussian",
    )
    denoiser.add_adapter(config)


def lora_state_dict(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(denoiser).items()}


def lora_metadata(denoiser: nn.Module) -> dict[str, Any]:
    config = denoiser.peft_config["default"]
    return {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}


@torch.no_grad()
def merged_copy(denoiser: nn.Module) -> nn.Module:
    """A plain copy of ``denoiser`` (same class, no peft layers) with W + (alpha / r) B A folded in."""
    from peft.tuners.lora import LoraLayer

    work = copy.deepcopy(denoiser)
    for module in work.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    state = {}
    for key, value in work.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    cls = type(denoiser)
    # diffusers models build from a config with from_config, transformers models with their constructor
    fresh = cls.from_config(denoiser.config) if hasattr(cls, "from_config") else cls(denoiser.config)
    fresh.load_state_dict(state, strict=True)
    return fresh.to(next(denoiser.parameters()).dtype).eval()
