"""Rollouts: run a generator + step kernel over a schedule and record the typed contract (docs/architecture.md).

For N samples (B prompts x G group members) a ``Rollout`` holds the prompt / group ids and seeds, the final
latents and decoded images, and — for each *trained* step only — x_t, x_next, the step's coordinates, the
network time input and the old log-prob (plus the step mean when asked). Steps that are not trained are not
stored. Each sample draws all its randomness (initial noise, choice of trained steps, step noise) from its
own ``torch.Generator`` seeded by ``sample_seed(run seed, iteration, rank, index)``, so results do not depend
on how samples are batched or split across processes. What a rollout stores and how it samples is a
``RolloutPlan``: the trainer builds one from the config and each algorithm may change it per iteration
(``Algorithm.rollout_plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from visalign.models.base import Cond, Generator, Schedule
from visalign.sampling import Kernel
from visalign.seeding import sample_seed, torch_generators

if TYPE_CHECKING:
    from visalign.algorithms.base import Algorithm
    from visalign.config import Config

__all__ = ["ImageRollouts", "Rollout", "RolloutPlan", "SampleBatch", "StepBatch", "choose_trained_steps",
           "run_rollout", "sample_seed"]


@dataclass(frozen=True)
class RolloutPlan:
    """How a rollout samples and what it stores (every field has the behaviour of a plain rollout by default).

    ``train_window`` = (first, last+1) limits the trained steps; ``sde_window`` the steps sampled with the
    stochastic kernel (others use ``deterministic_kernel``); ``num_train_steps`` (0: all) picks a subset per
    sample, at random when ``shuffle_steps``; ``store_steps=False`` stores none (algorithms that train on final
    samples only); ``store_mean`` also stores each trained step's Gaussian mean; ``share_initial_noise`` gives all
    members of a group the initial noise of its first member (DanceGRPO). ``batch_size`` (0: all) bounds how many
    samples go through the network at once, ``decode_batch_size`` through the decoder.
    """

    guidance_scale: float = 1.0
    num_train_steps: int = 0
    shuffle_steps: bool = True
    train_window: tuple[int, int] | None = None
    sde_window: tuple[int, int] | None = None
    deterministic_kernel: Kernel | None = None
    store_steps: bool = True
    store_mean: bool = False
    share_initial_noise: bool = False
    batch_size: int = 0
    decode_batch_size: int = 32

    def stochastic_at(self, step: int) -> bool:
        return self.sde_window is None or self.sde_window[0] <= step < self.sde_window[1]

    def trained_at(self, step: int) -> bool:
        window = self.train_window
        return self.stochastic_at(step) and (window is None or window[0] <= step < window[1])


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
    def outputs(self) -> torch.Tensor:
        """What the rewards score: the decoded images."""
        return self.images

    @property
    def device(self) -> torch.device:
        return self.x.device

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


def _initial_noise(generator: Generator, gens: list[torch.Generator], prompt_ids: torch.Tensor,
                   shared: bool) -> torch.Tensor:
    """Each sample's first draw; with ``shared`` every group member takes its group's first member's."""
    x = generator.init_noise(gens)
    if shared:
        first = {int(p): i for i, p in reversed(list(enumerate(prompt_ids.tolist())))}
        x = x[torch.tensor([first[int(p)] for p in prompt_ids.tolist()], device=x.device)]
    return x


def _step_noise(kernel: Kernel, gens: list[torch.Generator], like: torch.Tensor) -> torch.Tensor | None:
    """One Gaussian draw per sample from its own generator, when the kernel adds noise."""
    if not (kernel.stochastic and kernel.noise_level > 0):
        return None
    noise = torch.stack([torch.randn(tuple(like.shape[1:]), generator=g) for g in gens])
    return noise.to(device=like.device, dtype=like.dtype)


def _predict(generator: Generator, x: torch.Tensor, t: torch.Tensor, cond: Cond, guidance_scale: float,
             chunk: int) -> torch.Tensor:
    """The network's output for all samples, ``chunk`` at a time."""
    n = x.shape[0]
    outs = [generator.predict(x[s : s + chunk], t[s : s + chunk], cond.select(range(s, min(s + chunk, n))),
                              guidance_scale) for s in range(0, n, chunk)]
    return torch.cat(outs)


@torch.no_grad()
def run_rollout(
    generator: Generator,
    schedule: Schedule,
    kernel: Kernel,
    prompts: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    prompt_ids: torch.Tensor,
    seeds: Sequence[int],
    plan: RolloutPlan | None = None,
) -> Rollout:
    """Sample N = len(prompts) images, each from its own seeded generator, storing only the trained steps."""
    plan = plan or RolloutPlan()
    n, steps = len(prompts), len(schedule)
    gens = torch_generators(seeds)
    x = _initial_noise(generator, gens, prompt_ids, plan.share_initial_noise)
    dev = x.device
    cond = generator.encode(list(prompts), with_negative=plan.guidance_scale > 1.0)
    trainable = kernel.trainable(schedule.c, schedule.c_next)
    trainable &= torch.tensor([plan.trained_at(i) for i in range(steps)])
    if plan.store_steps:
        chosen = choose_trained_steps(trainable, plan.num_train_steps, gens, plan.shuffle_steps)  # [N, K]
    else:
        chosen = torch.empty((n, 0), dtype=torch.long)
    store = _StepStore(n, chosen.shape[1], x, plan.store_mean)
    sched_t, sched_c, sched_cn = (v.to(dev) for v in (schedule.t_model, schedule.c, schedule.c_next))
    chunk = plan.batch_size if plan.batch_size > 0 else n
    for i in range(steps):
        use = kernel if plan.stochastic_at(i) else (plan.deterministic_kernel or kernel)
        noise = _step_noise(use, gens, x)
        out = _predict(generator, x, sched_t[i].expand(n), cond, plan.guidance_scale, chunk)
        tr = use.step(x, out, sched_c[i].expand(n), sched_cn[i].expand(n), noise)
        store.record(chosen == i, x, tr)
        x = tr.x_next
    images = torch.cat([generator.decode(x[s : s + plan.decode_batch_size])
                        for s in range(0, n, plan.decode_batch_size)])
    idx = chosen.to(dev)
    return Rollout(
        prompts=list(prompts),
        metadata=list(metadata),
        prompt_ids=prompt_ids.clone(),
        group_ids=prompt_ids.clone(),
        seeds=torch.tensor([int(s) for s in seeds], dtype=torch.int64),
        cond=cond,
        kernel=kernel,
        guidance_scale=plan.guidance_scale,
        final_latents=x,
        images=images,
        step_index=idx,
        x=store.x,
        x_next=store.x_next,
        c=sched_c[idx],
        c_next=sched_cn[idx],
        t_model=sched_t[idx],
        log_prob=store.log_prob,
        mean=store.mean,
    )


class _StepStore:
    """The trained steps of a rollout, ``[N, K, ...]``: filled step by step as the sampler passes them."""

    def __init__(self, n: int, k: int, like: torch.Tensor, store_mean: bool) -> None:
        latent, dev = tuple(like.shape[1:]), like.device
        self.x = torch.empty((n, k, *latent), dtype=like.dtype, device=dev)
        self.x_next = torch.empty((n, k, *latent), dtype=like.dtype, device=dev)
        self.log_prob = torch.zeros((n, k), dtype=torch.float32, device=dev)
        self.mean = torch.empty((n, k, *latent), dtype=torch.float32, device=dev) if store_mean else None

    def record(self, here: torch.Tensor, x: torch.Tensor, tr: Any) -> None:
        """Store the step for the (sample, slot) pairs where ``here`` ([N, K] bool) is set."""
        rows, cols = here.nonzero(as_tuple=True)
        if not rows.numel():
            return
        rows, cols = rows.to(x.device), cols.to(x.device)
        self.x[rows, cols] = x[rows]
        self.x_next[rows, cols] = tr.x_next[rows]
        self.log_prob[rows, cols] = tr.log_prob[rows]
        if self.mean is not None:
            self.mean[rows, cols] = tr.mean[rows].float()


class ImageRollouts:
    """The rollout engine of an image generator: the config's schedule, step kernels and ``RolloutPlan``, built
    once; one ``run_rollout`` per iteration (with the algorithm's per-iteration plan); the held-out evaluation."""

    def __init__(self, generator: Generator, cfg: Config, algorithm: Algorithm) -> None:
        from visalign.errors import UserError

        sampling = cfg.sampling
        kernels = algorithm.kernels
        if kernels is not None and sampling.kernel not in kernels:
            raise UserError(f"sampling.kernel='{sampling.kernel}' cannot be used with '{cfg.algorithm.name}' "
                            f"(use one of {', '.join(kernels)})")
        self.generator = generator
        self.schedule = generator.schedule(sampling.num_steps)
        self.kernel = generator.make_kernel(sampling.kernel, sampling.noise_level, self.schedule, sampling.noise_pool)
        self.det_kernel = generator.make_kernel(generator.deterministic_kernel, 0.0, self.schedule)
        trainable = int(self.kernel.trainable(self.schedule.c, self.schedule.c_next).sum())
        self.num_train_steps = cfg.trained_steps_per_sample(trainable)
        self.num_train_steps_effective = min(self.num_train_steps or trainable, trainable)
        self.plan = RolloutPlan(
            guidance_scale=sampling.guidance_scale,
            num_train_steps=self.num_train_steps,
            shuffle_steps=sampling.shuffle_steps,
            train_window=tuple(sampling.train_window) if sampling.train_window else None,
            sde_window=tuple(sampling.sde_window) if sampling.sde_window else None,
            deterministic_kernel=self.det_kernel,
            store_steps="likelihood" in algorithm.needs,
            batch_size=sampling.batch_size,
        )

    def context(self) -> dict[str, Any]:
        """What an algorithm is told about the sampler (``RunContext`` fields)."""
        return {"schedule": self.schedule, "kernel": self.kernel, "deterministic_kernel": self.det_kernel}

    def rollout(self, iteration: int, algorithm: Algorithm, items: Sequence[dict[str, Any]], prompt_ids: torch.Tensor,
                seeds: Sequence[int]) -> Rollout:
        return run_rollout(self.generator, self.schedule, self.kernel, [m["prompt"] for m in items], items,
                           prompt_ids, seeds, algorithm.rollout_plan(iteration, self.plan))

    def evaluate(self, cfg: Config, items: Sequence[dict[str, Any]], out_dir: Any,
                 rewards: Sequence[tuple[Any, float]]) -> dict[str, Any]:
        from visalign.report.evaluation import evaluate_generator

        return evaluate_generator(self.generator, cfg, items, out_dir, rewards)
