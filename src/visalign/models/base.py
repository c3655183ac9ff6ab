"""The generator-adapter contract (docs/architecture.md, "Parts").

A ``Generator`` wraps one diffusers pipeline and exposes exactly what the engine needs:

* ``encode(prompts) -> Cond``: text conditioning, computed once per distinct prompt and cached;
* ``predict(x, t_model, cond, guidance_scale)``: one network evaluation (classifier-free guidance is done here,
  identically in rollouts and in training);
* ``decode(latents) -> images in [0, 1]`` and its inverse ``encode_images``; ``init_noise(generators)``;
  ``schedule(num_steps)``; ``make_kernel(name, ...)`` and ``deterministic_kernel`` (the evaluation sampler);
* the family's forward process, so that algorithms never branch on the family: ``noise_level_at(tau)`` (the
  network time and coordinate of a noise level tau in [0, 1]), ``add_noise(x0, eps, c)``,
  ``regression_target(x0, eps, c)`` (what the network is regressed on, and the weight that puts the squared error
  in the network's own output space) and ``x0_from_output(x, out, c)`` (the one-step clean estimate);
* ``trainable_parameters()``, a ``reference()`` context in which the policy acts as the frozen reference,
  ``trainable_state_dict`` / ``load_trainable_state_dict`` (checkpoints) and ``export`` (diffusers format).

A new model family is one adapter file implementing these and one line in ``visalign.models``' registry.

Fine-tuning is LoRA (peft; the reference is the policy with adapters disabled) or full (the reference is a
frozen copy of the denoiser).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visalign.models import lora as lora_utils


@dataclass
class Cond:
    """Per-sample conditioning tensors (``[N, ...]`` each); ``neg`` holds the unconditional ones for CFG."""

    pos: dict[str, torch.Tensor]
    neg: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return next(iter(self.pos.values())).shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> Cond:
        idx = torch.as_tensor(index, dtype=torch.long)
        neg = {k: v[idx] for k, v in self.neg.items()} if self.neg is not None else None
        return Cond({k: v[idx] for k, v in self.pos.items()}, neg)


@dataclass
class Schedule:
    """One entry per sampling step: the network's time input and the kernel coordinates (c -> c_next)."""

    t_model: torch.Tensor  # [S]
    c: torch.Tensor  # [S]
    c_next: torch.Tensor  # [S]

    def __len__(self) -> int:
        return int(self.t_model.shape[0])


@dataclass
class FinetuneSpec:
    mode: str = "lora"  # "lora" | "full"
    rank: int = 8
    alpha: float = 8.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    dropout: float = 0.0


class Generator:
    """Base adapter. Subclasses set ``family`` and implement the pipeline-specific pieces."""

    family: str = ""
    deterministic_kernel: str = ""  # the kernel of the family's deterministic sampler (evaluation)
    output_kind: str = "image"  # what it outputs: its rewards' kind and its rollout engine (``rollout_engines``)
    # what its rollouts can give an algorithm (``Algorithm.needs``): trajectories with log-probs, final samples,
    # pairs of them, a differentiable sampler
    provides: frozenset[str] = frozenset({"likelihood", "final", "pairs", "differentiable"})

    def __init__(self, pipeline: Any, device: str | torch.device = "cpu", negative_prompt: str = "") -> None:
        self.pipeline = pipeline
        self.device = torch.device(device)
        self.negative_prompt = negative_prompt
        self.finetune: FinetuneSpec | None = None
        self._frozen_copy: nn.Module | None = None
        self._use_reference = False
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self._neg_cache: dict[str, torch.Tensor] | None = None
        for module in self.modules().values():
            module.requires_grad_(False)
            module.eval()

    # ---- pieces a family implements -------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """All torch modules of the pipeline (frozen by default)."""
        return {k: v for k, v in self.pipeline.components.items() if isinstance(v, nn.Module)}

    def _encode_batch(self, prompts: list[str], with_negative: bool) -> tuple[dict, dict | None]:
        raise NotImplementedError

    def _forward(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the denoiser's input: its configured size, or ``resolution`` if set."""
        cfg = self.denoiser.config
        resolution = getattr(self, "resolution", None)
        size = cfg.sample_size if resolution is None else resolution // self.pipeline.vae_scale_factor
        return (cfg.in_channels, size, size)

    def resolution_rule(self) -> tuple[int, int | None, str]:
        """(step, largest side or None, why): the image sides this model takes are positive multiples of step."""
        factor = int(self.pipeline.vae_scale_factor)
        return factor, None, f"VAE factor {factor}"

    def check_resolution(self, resolution: int | None) -> None:
        """A ``UserError`` naming ``model.resolution`` when the model cannot take that side: the latent side is
        ``resolution // vae_scale_factor``, so another size is silently changed, or fails deep in the network."""
        if resolution is None:
            return
        step, largest, why = self.resolution_rule()
        if resolution <= 0 or resolution % step or (largest is not None and resolution > largest):
            from visalign.errors import UserError

            limit = f", at most {largest}" if largest is not None else ""
            raise UserError(f"model.resolution={resolution}: this model takes image sides that are positive "
                            f"multiples of {step} ({why}){limit}")

    def schedule(self, num_steps: int) -> Schedule:
        raise NotImplementedError

    def make_kernel(self, name: str, noise_level: float, schedule: Schedule, noise_pool: int = 1):
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Latents of ``images`` ([N, 3, H, W] in [0, 1]): the inverse of ``decode``."""
        raise NotImplementedError

    @torch.no_grad()
    def _vae_encode(self, images: torch.Tensor, batch_size: int, shift: float) -> torch.Tensor:
        """(VAE posterior mean - shift) x scaling factor, ``batch_size`` images at a time (the mean, not a sample:
        an image encodes the same way every time)."""
        vae = self.pipeline.vae
        out = []
        for s in range(0, len(images), batch_size):
            x = (images[s : s + batch_size] * 2 - 1).to(device=self.device, dtype=vae.dtype)
            z = vae.encode(x).latent_dist.mode()
            out.append((z.float() - shift) * vae.config.scaling_factor)
        return torch.cat(out)

    # ---- the family's forward process ------------------------------------------------------------------------
    def noise_level_at(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(network time ``[B]``, kernel coordinate ``c`` ``[B]``) of noise levels ``tau`` in [0, 1]."""
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Clean latents ``x0`` noised with ``noise`` to the coordinates ``c`` ([B]), in float32."""
        raise NotImplementedError

    def regression_target(self, x0: torch.Tensor, noise: torch.Tensor,
                          c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target, weight ``[B]``): what ``predict`` at ``add_noise(x0, noise, c)`` is regressed on, and the
        squared-error weight that puts that regression in the network's own output space; float32."""
        raise NotImplementedError

    def x0_from_output(self, x: torch.Tensor, out: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The clean-latent estimate from one ``predict`` output ``out`` at ``x`` (coordinates ``c``), float32."""
        raise NotImplementedError

    # ---- shared behaviour -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str], with_negative: bool = False) -> Cond:
        """Conditioning for ``prompts`` (one row each), from the cache where possible."""
        missing = sorted({p for p in prompts if p not in self._cache})
        for start in range(0, len(missing), 64):
            chunk = missing[start : start + 64]
            pos, _ = self._encode_batch(chunk, with_negative=False)
            for i, p in enumerate(chunk):
                self._cache[p] = {k: v[i : i + 1].detach() for k, v in pos.items()}
        pos = {k: torch.cat([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}
        neg = None
        if with_negative:
            if self._neg_cache is None:
                one, _ = self._encode_batch([self.negative_prompt], with_negative=False)
                self._neg_cache = {k: v.detach() for k, v in one.items()}
            neg = {k: v.expand(len(prompts), *v.shape[1:]) for k, v in self._neg_cache.items()}
        return Cond(pos, neg)

    def predict(
        self, x: torch.Tensor, t_model: torch.Tensor, cond: Cond, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """One network evaluation at latents ``x`` and times ``t_model`` ([B]); CFG when guidance_scale > 1."""
        net = self._frozen_copy if (self._use_reference and self._frozen_copy is not None) else self.denoiser
        if guidance_scale > 1.0:
            if cond.neg is None:
                raise ValueError("guidance_scale > 1 needs unconditional embeddings (encode(..., with_negative=True))")
            both = {k: torch.cat([cond.neg[k], cond.pos[k]]) for k in cond.pos}
            out = self._forward(net, torch.cat([x, x]), torch.cat([t_model, t_model]), both)
            uncond, text = out.chunk(2)
            return uncond + guidance_scale * (text - uncond)
        return self._forward(net, x, t_model, cond.pos)

    def init_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        shape = self.latent_shape()
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)

    # ---- fine-tuning --------------------------------------------------------------------------------------
    def setup_finetune(self, spec: FinetuneSpec) -> None:
        self.finetune = spec
        if spec.mode == "lora":
            lora_utils.add_lora(self.denoiser, spec)
            for p in self.trainable_parameters():  # adapters train in float32 even on a half-precision base
                p.data = p.data.float()
        elif spec.mode == "full":
            self._frozen_copy = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
            self.denoiser.requires_grad_(True)
        else:
            raise ValueError(f"finetune mode must be 'lora' or 'full', got '{spec.mode}'")
        self.denoiser.train()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.denoiser.named_parameters() if p.requires_grad)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_trainable()}

    @torch.no_grad()
    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_trainable())
        if set(params) != set(state):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise KeyError(f"trainable weights do not match (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, p in params.items():
            if p.shape != state[name].shape:
                raise KeyError(f"trainable weight '{name}' has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[name])

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, ``predict`` evaluates the frozen reference model (no LoRA / the frozen copy)."""
        if self.finetune is None:
            yield
            return
        if self.finetune.mode == "lora":
            self.denoiser.disable_adapters()
            try:
                yield
            finally:
                self.denoiser.enable_adapters()
        else:
            self._use_reference = True
            try:
                yield
            finally:
                self._use_reference = False

    # ---- export -----------------------------------------------------------------------------------------
    def save_lora(self, out_dir: str | Path) -> None:
        raise NotImplementedError

    def save_merged(self, out_dir: str | Path) -> None:
        """Full pipeline with the trained weights folded in, via ``save_pretrained``."""
        pipe = self.pipeline
        denoiser_name = self.denoiser_component
        if self.finetune is not None and self.finetune.mode == "lora":
            merged = lora_utils.merged_copy(self.denoiser)
        else:
            merged = self.denoiser
        original = getattr(pipe, denoiser_name)
        setattr(pipe, denoiser_name, merged)
        try:
            pipe.register_modules(**{denoiser_name: merged})
            pipe.save_pretrained(str(out_dir))
        finally:
            pipe.register_modules(**{denoiser_name: original})
        from visalign.models._safetensors import canonicalize_folder

        canonicalize_folder(out_dir)  # byte-reproducible whatever metadata a library writes

    denoiser_component: str = ""
