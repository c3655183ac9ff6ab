"""Rollouts: run a generator + step kernel over a schedule and record the typed contract (DESIGN.md 3).

For N samples (B prompts x G group members) a ``Rollout`` holds the prompt / group ids and seeds, the final
latents and decoded images, and — for each *trained* step only — x_t, x_next, the step's coordinates, the
network time input and the old log-prob (plus the step mean when asked). Steps that are not trained are not
stored. Each sample draws all its randomness (initial noise, choice of trained steps, step noise) from its
own ``torch.Generator`` seeded by ``sample_seed(run seed, iteration, rank, index)``, so results do not depend
on how samples are batched or split across processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visalign.models.base import Cond, Generator, Schedule
from visalign.sampling import Kernel


def sample_seed(run_seed: int, iteration: int, rank: int, index: int, stream: str = "rollout") -> int:
    """A 63-bit seed from (run seed, iteration, rank, sample index); stable across runs and platforms."""
    key = f"{stream}:{run_seed}:{iteration}:{rank}:{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


@dataclass
class StepBatch:
    """One stored step for a minibatch of samples: what a likelihood algorithm's ``loss`` receives."""

    x: torch.Tensor
    x_next: torch.Tensor
    c: torch.Tensor
    c_next: torch.Tensor
    t_model: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    cond: Cond
    kernel: Kernel
    guidance_scale: float
    step_index: torch.Tensor
    old_mean: torch.Tensor | None = None


@dataclass
class SampleBatch:
    """Final samples of a minibatch: what ``final`` / ``pairs`` algorithms' ``loss`` receives."""

    final_latents: torch.Tensor
    images: torch.Tensor
    prompts: list[str]
    metadata: list[dict[str, Any]]
    group_ids: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    rewards: dict[str, torch.Tensor]
    cond: Cond
    guidance_scale: float
    seeds: torch.Tensor


@dataclass
class Rollout:
    prompts: list[str]
    metadata: list[dict[str, Any]]
    prompt_ids: torch.Tensor  # [N] index of the prompt within the iteration's global prompt batch
    group_ids: torch.Tensor  # [N] (== prompt_ids: one group per prompt)
    seeds: torch.Tensor  # [N] int64 seed of each sample's generator
    cond: Cond
    kernel: Kernel
    guidance_scale: float
    final_latents: torch.Tensor  # [N, C, h, w]
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    # trained steps: K per sample
    step_index: torch.Tensor  # [N, K]
    x: torch.Tensor  # [N, K, C, h, w]
    x_next: torch.Tensor  # [N, K, C, h, w]
    c: torch.Tensor  # [N, K]
    c_next: torch.Tensor  # [N, K]
    t_model: torch.Tensor  # [N, K]
    log_prob: torch.Tensor  # [N, K] float32
    mean: torch.Tensor | None = None  # [N, K, C, h, w] when requested
    advantages: torch.Tensor | None = None  # [N], set by the trainer
    mask: torch.Tensor | None = None  # [N] bool
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_trained_steps(self) -> int:
        return int(self.step_index.shape[1])

    def sample_batch(self, indices: torch.Tensor) -> SampleBatch:
        if self.advantages is None or self.mask is None:
            raise RuntimeError("advantages must be set before training on a rollout")
        i = indices
        return SampleBatch(
            final_latents=self.final_latents[i],
            images=self.images[i],
            prompts=[self.prompts[j] for j in i.tolist()],
            metadata=[self.metadata[j] for j in i.tolist()],
            group_ids=self.group_ids[i],
            advantages=self.advantages[i],
            mask=self.mask[i],
            rewards={k: v[i] for k, v in self.rewards.items()},
            cond=self.cond.select(i),
            guidance_scale=self.guidance_scale,
            seeds=self.seeds[i],
        )

    def step_batch(self, indices: torch.Tensor, k: int) -> StepBatch:
        if self.advantages is None or self.mask is None:
            raise RuntimeError("advantages must be set before training on a rollout")
        i = indices
        return StepBatch(
            x=self.x[i, k],
            x_next=self.x_next[i, k],
            c=self.c[i, k],
            c_next=self.c_next[i, k],
            t_model=self.t_model[i, k],
            old_log_prob=self.log_prob[i, k],
            advantages=self.advantages[i],
            mask=self.mask[i],
            cond=self.cond.select(i),
            kernel=self.kernel,
            guidance_scale=self.guidance_scale,
            step_index=self.step_index[i, k],
            old_mean=self.mean[i, k] if self.mean is not None else None,
        )


def choose_trained_steps(
    trainable: torch.Tensor, num_train: int, generators: Sequence[torch.Generator], shuffle: bool
) -> torch.Tensor:
    """Per sample, ``num_train`` of the trainable step indices (random subset if ``shuffle``) -> [N, K]."""
    candidates = trainable.nonzero().flatten()
    if candidates.numel() == 0:
        raise ValueError("no trainable step in the schedule (a deterministic kernel, or a window without noise)")
    k = min(num_train, candidates.numel()) if num_train > 0 else candidates.numel()
    rows = []
    for g in generators:
        order = torch.randperm(candidates.numel(), generator=g)[:k] if shuffle else torch.arange(k)
        rows.append(candidates[order.sort().values])
    return torch.stack(rows)


@torch.no_grad()
def run_rollout(
    generator: Generator,
    schedule: Schedule,
    kernel: Kernel,
    prompts: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    prompt_ids: torch.Tensor,
    seeds: Sequence[int],
    guidance_scale: float = 1.0,
    num_train_steps: int = 0,
    shuffle_steps: bool = True,
    train_window: tuple[int, int] | None = None,
    deterministic_kernel: Kernel | None = None,
    sde_window: tuple[int, int] | None = None,
    store_mean: bool = False,
    store_steps: bool = True,
    share_initial_noise: bool = False,
    batch_size: int = 0,
    decode_batch_size: int = 32,
) -> Rollout:
    """Sample N = len(prompts) images, each from its own seeded generator, storing only the trained steps.

    ``train_window`` = (first, last+1) limits the trained steps; ``sde_window`` the steps sampled with the
    stochastic ``kernel`` (others use ``deterministic_kernel``); ``num_train_steps`` (0: all) picks a subset
    per sample; ``store_steps=False`` stores none (algorithms that train on final samples only);
    ``share_initial_noise`` gives all members of a group the initial noise of its first member (DanceGRPO).
    ``batch_size`` (0: all) bounds how many samples go through the network at once.
    """
    n = len(prompts)
    steps = len(schedule)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = generator.init_noise(gens)
    dev = x.device
    if share_initial_noise:
        first = {int(p): i for i, p in reversed(list(enumerate(prompt_ids.tolist())))}
        x = x[torch.tensor([first[int(p)] for p in prompt_ids.tolist()], device=dev)]
    cond = generator.encode(list(prompts), with_negative=guidance_scale > 1.0)

    def stochastic_at(i: int) -> bool:
        return sde_window is None or sde_window[0] <= i < sde_window[1]

    trainable = kernel.trainable(schedule.c, schedule.c_next)
    for i in range(steps):
        if not stochastic_at(i) or (train_window is not None and not train_window[0] <= i < train_window[1]):
            trainable[i] = False
    if store_steps:
        chosen = choose_trained_steps(trainable, num_train_steps, gens, shuffle_steps)  # [N, K]
    else:
        chosen = torch.empty((n, 0), dtype=torch.long)
    k = chosen.shape[1]
    latent = tuple(x.shape[1:])
    store = {
        "x": torch.empty((n, k, *latent), dtype=x.dtype, device=dev),
        "x_next": torch.empty((n, k, *latent), dtype=x.dtype, device=dev),
        "log_prob": torch.zeros((n, k), dtype=torch.float32, device=dev),
    }
    if store_mean:
        store["mean"] = torch.empty((n, k, *latent), dtype=torch.float32, device=dev)
    sched_t, sched_c, sched_cn = (v.to(dev) for v in (schedule.t_model, schedule.c, schedule.c_next))
    chunk = batch_size if batch_size > 0 else n
    for i in range(steps):
        use = kernel if stochastic_at(i) else (deterministic_kernel or kernel)
        noise = None
        if use.stochastic and use.noise_level > 0:
            noise = torch.stack([torch.randn(latent, generator=g) for g in gens]).to(device=dev, dtype=x.dtype)
        c = sched_c[i].expand(n)
        c_next = sched_cn[i].expand(n)
        t = sched_t[i].expand(n)
        outs = [generator.predict(x[s : s + chunk], t[s : s + chunk], cond.select(range(s, min(s + chunk, n))),
                                  guidance_scale) for s in range(0, n, chunk)]
        tr = use.step(x, torch.cat(outs), c, c_next, noise)
        rows, cols = (chosen == i).nonzero(as_tuple=True)
        rows, cols = rows.to(dev), cols.to(dev)
        if rows.numel():
            store["x"][rows, cols] = x[rows]
            store["x_next"][rows, cols] = tr.x_next[rows]
            store["log_prob"][rows, cols] = tr.log_prob[rows]
            if store_mean:
                store["mean"][rows, cols] = tr.mean[rows].float()
        x = tr.x_next
    images = torch.cat([generator.decode(x[s : s + decode_batch_size]) for s in range(0, n, decode_batch_size)])
    idx = chosen.to(dev)
    return Rollout(
        prompts=list(prompts),
        metadata=list(metadata),
        prompt_ids=prompt_ids.clone(),
        group_ids=prompt_ids.clone(),
        seeds=torch.tensor([int(s) for s in seeds], dtype=torch.int64),
        cond=cond,
        kernel=kernel,
        guidance_scale=guidance_scale,
        final_latents=x,
        images=images,
        step_index=idx,
        x=store["x"],
        x_next=store["x_next"],
        c=sched_c[idx],
        c_next=sched_cn[idx],
        t_model=sched_t[idx],
        log_prob=store["log_prob"],
        mean=store.get("mean"),
    )


@torch.no_grad()
def sample_deterministic(
    generator: Generator,
    schedule: Schedule,
    kernel: Kernel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance_scale: float = 1.0,
    batch_size: int = 32,
) -> torch.Tensor:
    """Images [N, 3, H, W] from the deterministic sampler (evaluation): no step is stored."""
    images = []
    for s in range(0, len(prompts), batch_size):
        ps = list(prompts[s : s + batch_size])
        gens = [torch.Generator().manual_seed(int(z)) for z in seeds[s : s + batch_size]]
        x = generator.init_noise(gens)
        t_model, c, c_next = (v.to(x.device) for v in (schedule.t_model, schedule.c, schedule.c_next))
        cond = generator.encode(ps, with_negative=guidance_scale > 1.0)
        n = len(ps)
        for i in range(len(schedule)):
            out = generator.predict(x, t_model[i].expand(n), cond, guidance_scale)
            x = kernel.step(x, out, c[i].expand(n), c_next[i].expand(n), None).x_next
        images.append(generator.decode(x))
    return torch.cat(images)
