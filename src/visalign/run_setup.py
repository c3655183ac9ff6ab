"""Building a run from its config: the model, the generator adapter, the rewards, the fingerprint.

Used by the trainer, by export and by everything else that has to rebuild a run's generator exactly as it was
trained (the same adapter options, the same LoRA initialisation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from visalign.errors import UserError
from visalign.models import FinetuneSpec, Generator, build_generator

if TYPE_CHECKING:
    from visalign.config import Config
    from visalign.rewards.base import Reward


def resolve_model(name: str) -> str:
    """A shipped alias or local folder as is; a hub id (``org/name``) through the local hub cache (or a download
    when the hub is reachable)."""
    from visalign.models.loading import ALIASES

    if name in ALIASES or Path(name).expanduser().exists():
        return name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name)
        except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear message
            raise UserError(f"model '{name}': not a local folder, and not available from the hub "
                            f"({type(err).__name__}); download it or pass a local diffusers folder") from None
    return name


def load_model(cfg: Config) -> tuple[str, Any, dict[str, Any]]:
    """(family, pipeline, the folder's sampler defaults) of ``model.name``: a diffusers pipeline folder, or a
    transformers image-text-to-text checkpoint (``config.json``, no ``model_index.json``: the ``vlm`` family)."""
    from visalign.models.loading import load_pipeline, resolve_model_path, sampler_defaults

    name = resolve_model(cfg.model.name)
    dtype = getattr(torch, cfg.model.dtype)
    path = resolve_model_path(name)
    if not (path / "model_index.json").is_file() and (path / "config.json").is_file():
        from visalign.models.vlm import VLMPipeline
        from visalign.models.vlm_loading import load_vlm

        model, processor = load_vlm(path, dtype=dtype)  # names what is wrong with the folder
        return "vlm", VLMPipeline(model, processor), {}
    family, pipe = load_pipeline(name, torch_dtype=dtype)
    return family, pipe, sampler_defaults(name)


def make_generator(cfg: Config, family: str, pipe: Any, defaults: dict[str, Any], device: Any = "cpu") -> Generator:
    """The family's adapter around ``pipe``, with the config's fine-tuning set up."""
    msl = cfg.model.max_sequence_length
    options: dict[str, Any] = {"device": device, "negative_prompt": cfg.model.negative_prompt,
                               "resolution": cfg.model.resolution,
                               "max_sequence_length": msl if msl is not None else defaults.get("max_sequence_length")}
    generator = build_generator(family, pipe, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the LoRA initialisation draws from the global RNG: seed it from the run
        generator.setup_finetune(FinetuneSpec(mode=cfg.finetune.mode, rank=cfg.finetune.lora_rank,
                                              alpha=cfg.finetune.lora_alpha,
                                              target_modules=tuple(cfg.finetune.target_modules)))
    return generator


def build_rewards(cfg: Config) -> list[tuple[Reward, float]]:
    """The config's rewards, built, with their weights."""
    from visalign.rewards import build_reward

    return [(build_reward(spec.name, **spec.options), spec.weight) for spec in cfg.rewards]


def run_fingerprint(cfg: Config, family: str, generator: Generator, num_prompts: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes (or exports) it."""
    shapes = sorted((n, list(p.shape)) for n, p in generator.named_trainable())
    return {
        "model": cfg.model.name,
        "family": family,
        "finetune": cfg.finetune.mode,
        "trainable": json.dumps(shapes),
        "algorithm": cfg.algorithm.name,
        "prompts": num_prompts,
    }
