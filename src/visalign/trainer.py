"""The one training loop: prompts -> rollout -> reward -> advantage -> optimize -> log / eval / save.

Every algorithm runs through ``Trainer``: an algorithm only supplies ``loss(batch, generator)`` (and says what it
needs); the loop, distributed bookkeeping, checkpoints, evaluation and logging are written once, here.
An offline algorithm (one whose ``offline_batch(iteration, generator)`` returns a batch of its data set)
skips rollout, reward and advantage; the rest of the loop is the same.

Distributed: built on accelerate (``accelerate launch`` / ``torchrun``). Each process rolls out whole groups
(the global prompt batch is split by rank), rewards are gathered so that advantages see the whole batch, and the
gradients of every optimizer step are summed across processes with each sample weighted 1 / (global samples in
the step): N processes compute the same update as one process on the same global batch.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from visalign.advantages import compute_advantages
from visalign.algorithms import build_algorithm
from visalign.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest_valid,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from visalign.config import Config, dump_config
from visalign.errors import UserError
from visalign.jsonl import read_jsonl
from visalign.models import FinetuneSpec, Generator, build_generator
from visalign.models.ema import EMA
from visalign.report.metrics import MetricsLogger, truncate_metrics
from visalign.report.progress import TrainProgress
from visalign.rewards.base import Reward, check_scores
from visalign.rollout import Rollout, run_rollout, sample_deterministic, sample_seed
from visalign.run_directory import RunLock, record_resume, resume_changes
from visalign.sampling import DETERMINISTIC

# ---------------------------------------------------------------------------------------------------------------
# prompts


def load_prompts(source: str) -> list[dict[str, Any]]:
    """A ShapesWorld split name, a JSONL file of metadata (each with a "prompt"), or a text file of prompts."""
    from visalign.worlds.shapes.prompts import load_prompt_file, load_split

    if source in ("train", "test"):
        return load_split(source)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path}: prompt file not found")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, row in read_jsonl(path):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise UserError(f"{path}:{lineno}: each line must be an object with a non-empty \"prompt\" string")
            rows.append(row)
        if not rows:
            raise UserError(f"{path}: no prompts in file")
        if any("include" in r for r in rows):
            return load_prompt_file(path)  # GenEval-style metadata: validated by the world's checker
        return rows
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path}: no prompts in file")
    return [{"prompt": p} for p in prompts]


def balance_by_tag(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tag's items repeated in order up to the largest tag's count (items without a tag form one group)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item.get("tag"), []).append(item)
    top = max(len(g) for g in groups.values())
    return [g[i % len(g)] for g in groups.values() for i in range(top)]


def train_prompts(cfg: Config) -> list[dict[str, Any]]:
    """The run's training prompts: ``data.train``, tag-balanced when ``data.balance_tags``."""
    items = load_prompts(cfg.data.train)
    return balance_by_tag(items) if cfg.data.balance_tags else items


class PromptStream:
    """Endless shuffled pass over the prompts; the permutation of epoch e is seeded by (seed, e)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch, self.pos = 0, 0

    def _perm(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0, 0, stream="prompts"))
        return torch.randperm(self.size, generator=g)

    def next(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            perm = self._perm()
            take = min(n - len(out), self.size - self.pos)
            out += perm[self.pos : self.pos + take].tolist()
            self.pos += take
            if self.pos == self.size:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["size"] != self.size:
            raise UserError(f"checkpoint was trained on {state['size']} prompts, this run has {self.size}")
        self.epoch, self.pos = state["epoch"], state["pos"]


# ---------------------------------------------------------------------------------------------------------------
# helpers


def make_generator(cfg: Config, family: str, pipe: Any, defaults: dict[str, Any], device: Any = "cpu") -> Generator:
    """The family's adapter around ``pipe``, with the config's fine-tuning set up."""
    kwargs: dict[str, Any] = {"device": device, "negative_prompt": cfg.model.negative_prompt,
                              "resolution": cfg.model.resolution}
    if family == "flow":
        msl = cfg.model.max_sequence_length
        kwargs["max_sequence_length"] = msl if msl is not None else defaults.get("max_sequence_length")
    generator = build_generator(family, pipe, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the LoRA initialisation draws from the global RNG: seed it from the run
        generator.setup_finetune(FinetuneSpec(mode=cfg.finetune.mode, rank=cfg.finetune.lora_rank,
                                              alpha=cfg.finetune.lora_alpha,
                                              target_modules=tuple(cfg.finetune.target_modules)))
    return generator


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


def _lr_lambda(cfg: Config, total_steps: int):
    warm, kind = cfg.train.warmup_iters * _opt_steps_per_iter(cfg), cfg.train.lr_schedule

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac

    return f


def _opt_steps_per_iter(cfg: Config) -> int:
    n = cfg.data.prompts_per_iter * cfg.data.group_size
    mb = cfg.train.minibatch_size or n
    return cfg.train.inner_epochs * max(1, math.ceil(math.ceil(n / mb) / cfg.train.grad_accum))


class _Metrics:
    """Aggregates per-micro-batch metrics: min for '/min' keys, max for '/max' and '_max' keys, else mean."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.values[k].append(float(v))

    def result(self) -> dict[str, float]:
        out = {}
        for k, vs in self.values.items():
            if k.endswith("/min"):
                out[k] = min(vs)
            elif k.endswith("/max") or k.endswith("_max"):
                out[k] = max(vs)
            else:
                out[k] = sum(vs) / len(vs)
        return out


# ---------------------------------------------------------------------------------------------------------------


class Trainer:
    """Build everything from a ``Config`` and run the loop (``run()``).

    ``pipeline=(family, pipeline)`` and ``rewards=[(Reward, weight), ...]`` override the config's model and
    rewards (used by tests and by the Python API).
    """

    def __init__(
        self,
        config: Config,
        pipeline: tuple[str, Any] | None = None,
        rewards: Sequence[tuple[Reward, float]] | None = None,
        console: Any = None,
    ) -> None:
        from accelerate import Accelerator

        self.cfg = cfg = config
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if cfg.data.prompts_per_iter % self.world:
            raise UserError(f"data.prompts_per_iter={cfg.data.prompts_per_iter} must be divisible by {self.world} processes")
        self.run_dir = Path(cfg.run_dir)
        self.console = console

        # model
        self.family, pipe, defaults = self._load_model(pipeline)
        pipe.to(self.accelerator.device)
        self.generator: Generator = make_generator(cfg, self.family, pipe, defaults, self.accelerator.device)

        # algorithm and sampler
        self.algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.options, source="algorithm.options")
        if self.family not in self.algorithm.families:
            raise UserError(f"algorithm '{cfg.algorithm.name}' supports {self.algorithm.families} models, "
                            f"not '{self.family}' ({cfg.model.name})")
        kernels = self.algorithm.kernels
        if kernels is not None and cfg.sampling.kernel not in kernels:
            raise UserError(f"sampling.kernel='{cfg.sampling.kernel}' cannot be used with '{cfg.algorithm.name}' "
                            f"(use one of {', '.join(kernels)})")
        self.schedule = self.generator.schedule(cfg.sampling.num_steps)
        self.kernel = self.generator.make_kernel(cfg.sampling.kernel, cfg.sampling.noise_level, self.schedule,
                                                 cfg.sampling.noise_pool)
        det = DETERMINISTIC[self.family]
        self.det_kernel = self.generator.make_kernel(det, 0.0, self.schedule)
        trainable = int(self.kernel.trainable(self.schedule.c, self.schedule.c_next).sum())
        self.num_train_steps = cfg.trained_steps_per_sample(trainable)
        self.num_train_steps_effective = min(self.num_train_steps or trainable, trainable)

        # rewards
        self.rewards = list(rewards) if rewards is not None else self._build_rewards()
        self.algorithm.bind(rewards=self.rewards, schedule=self.schedule, kernel=self.kernel,
                            deterministic_kernel=self.det_kernel, seed=cfg.seed, rank=self.rank, world=self.world,
                            samples_per_iter=cfg.data.prompts_per_iter * cfg.data.group_size)

        # data
        self.train_items = train_prompts(cfg)
        self.test_items = load_prompts(cfg.data.test) if cfg.eval.enabled else []
        from visalign.rewards.base import check_metadata

        # a prompt without the metadata a reward reads: say so now, naming the file, not after the first rollout
        check_metadata(self.rewards, self.train_items, cfg.data.train)
        check_metadata(self.rewards, self.test_items, cfg.data.test)
        self.stream = PromptStream(len(self.train_items), cfg.seed)

        # optimisation
        params = self.generator.trainable_parameters()
        if not params:
            raise UserError("no trainable parameters (check finetune.target_modules)")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                           eps=cfg.train.adam_eps, weight_decay=cfg.train.weight_decay)
        total = cfg.train.iterations * _opt_steps_per_iter(cfg)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, total))
        self.ema = EMA(list(self.generator.named_trainable()), cfg.train.ema.decay) if cfg.train.ema.enabled else None

        self.start_iteration = 0
        self.timings: dict[str, float] = defaultdict(float)
        self.last_eval: dict[str, Any] | None = None
        self._last_eval_seconds: float | None = None
        self._eval_seconds_run = 0.0

    # ---- construction helpers ------------------------------------------------------------------------------
    def _load_model(self, pipeline: tuple[str, Any] | None) -> tuple[str, Any, dict[str, Any]]:
        if pipeline is not None:
            return pipeline[0], pipeline[1], {}
        from visalign.models.loading import load_pipeline, sampler_defaults

        name = resolve_model(self.cfg.model.name)
        family, pipe = load_pipeline(name, torch_dtype=getattr(torch, self.cfg.model.dtype))
        return family, pipe, sampler_defaults(name)

    def _build_rewards(self) -> list[tuple[Reward, float]]:
        from visalign.rewards import build_reward

        return [(build_reward(spec.name, **spec.options), spec.weight) for spec in self.cfg.rewards]

    def fingerprint(self) -> dict[str, Any]:
        return run_fingerprint(self.cfg, self.family, self.generator, len(self.train_items))

    # ---- state -----------------------------------------------------------------------------------------------
    def state_dict(self, iteration: int) -> dict[str, Any]:
        return {
            "model": self.generator.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
            "data": self.stream.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "timings": dict(self.timings),
            "iteration": iteration,
        }

    def load_state(self, state: dict[str, Any], source: Path) -> None:
        try:
            self.generator.load_trainable_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            if self.ema is not None:
                if state.get("ema") is None:
                    raise KeyError("the checkpoint has no EMA but this run enables train.ema")
                self.ema.load_state_dict(state["ema"])
            self.stream.load_state_dict(state["data"])
            self.algorithm.load_state_dict(state.get("algorithm", {}))
            set_rng_state(state["rng"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise UserError(f"{source}: incompatible checkpoint ({err})") from None
        self.timings = defaultdict(float, state.get("timings", {}))
        self.start_iteration = int(state["iteration"])

    # ---- one iteration -----------------------------------------------------------------------------------
    def _local_samples(self, iteration: int) -> tuple[list[dict], torch.Tensor, list[int]]:
        cfg = self.cfg
        b_global, g = cfg.data.prompts_per_iter, cfg.data.group_size
        chosen = self.stream.next(b_global)
        b_local = b_global // self.world
        items, prompt_ids, seeds = [], [], []
        for j in range(b_local):
            pid = self.rank * b_local + j
            for member in range(g):
                items.append(self.train_items[chosen[pid]])
                prompt_ids.append(pid)
                # the rank enters through the global sample index: splits across processes do not change draws
                seeds.append(sample_seed(cfg.seed, iteration, 0, pid * g + member))
        return items, torch.tensor(prompt_ids), seeds

    def _score(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        images = rollout.images.detach()
        out: dict[str, torch.Tensor] = {}
        for reward, _w in self.rewards:
            name = getattr(reward, "name", type(reward).__name__)
            if getattr(reward, "groupwise", False):
                parts: list[dict[str, torch.Tensor]] = []
                for gid in rollout.group_ids.unique(sorted=True):
                    idx = (rollout.group_ids == gid).nonzero().flatten()
                    parts.append(reward(images[idx], [rollout.prompts[i] for i in idx],
                                        [rollout.metadata[i] for i in idx]))
                scores = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            else:
                scores = reward(images, rollout.prompts, rollout.metadata)
            check_scores(name, scores, len(rollout))
            main = next(iter(scores))
            out[name] = scores[main].detach().float().cpu()
            for k, v in scores.items():
                if k != main:
                    out[f"{name}/{k}"] = v.detach().float().cpu()
        return out

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(t.contiguous()) if self.world > 1 else t

    def _all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="sum"))

    def _optimizer_step(self) -> float:
        params = self.generator.trainable_parameters()
        if self.world > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.flatten() for g in grads])
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone()
                offset += n
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None:
            self.ema.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _optimize(self, rollout: Rollout, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        n = len(rollout)
        local = torch.arange(n)
        if cfg.train.skip_zero_variance:
            local = local[rollout.mask.cpu()]
        num_mb = max(1, math.ceil(n / (cfg.train.minibatch_size or n)))
        agg = _Metrics()
        first_log_ratio = 0.0
        updates = 0
        grad_norms: list[float] = []
        pending = False
        for epoch in range(cfg.train.inner_epochs):
            g = torch.Generator().manual_seed(sample_seed(cfg.seed, iteration, self.rank, epoch, stream="shuffle"))
            perm = local[torch.randperm(len(local), generator=g)]
            chunks = torch.tensor_split(perm, num_mb)
            for j, chunk in enumerate(chunks):
                count = self._all_sum(len(chunk))
                if count > 0 and len(chunk) > 0:
                    micro = list(self.algorithm.micro_batches(rollout, chunk))
                    for mb in micro:
                        loss, metrics = self.algorithm.loss(mb, self.generator)
                        (loss * (len(chunk) / count / len(micro) / cfg.train.grad_accum)).backward()
                        agg.add(metrics)
                        if updates == 0 and "log_ratio_abs_max" in metrics:
                            first_log_ratio = max(first_log_ratio, metrics["log_ratio_abs_max"])
                pending = pending or count > 0
                last = j == len(chunks) - 1
                if pending and ((j + 1) % cfg.train.grad_accum == 0 or last):
                    grad_norms.append(self._optimizer_step())
                    updates += 1
                    pending = False
        out = agg.result()
        out.pop("log_ratio_abs_max", None)
        out["first_step_log_ratio"] = first_log_ratio
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        out["updates"] = updates
        out["trained_samples"] = int(self._all_sum(len(local)))
        return out

    def iteration(self, it: int) -> dict[str, Any]:
        cfg = self.cfg
        self.algorithm.on_iteration_start(it)
        row: dict[str, Any] = {"iteration": it}
        t0 = time.perf_counter()
        batch = self.algorithm.offline_batch(it, self.generator)
        if batch is not None:
            return self._offline_iteration(it, batch, time.perf_counter() - t0)
        items, prompt_ids, seeds = self._local_samples(it)
        self.generator.denoiser.eval()
        window, sde_window = cfg.sampling.train_window, cfg.sampling.sde_window
        options: dict[str, Any] = {
            "guidance_scale": cfg.sampling.guidance_scale,
            "num_train_steps": self.num_train_steps,
            "shuffle_steps": cfg.sampling.shuffle_steps,
            "train_window": tuple(window) if window else None,
            "deterministic_kernel": self.det_kernel,
            "sde_window": tuple(sde_window) if sde_window else None,
            "store_mean": "means" in getattr(self.algorithm, "extra_needs", ()),
            "store_steps": "likelihood" in self.algorithm.needs,
            "batch_size": cfg.sampling.batch_size,
        }
        options.update(self.algorithm.rollout_overrides(it))
        rollout = run_rollout(self.generator, self.schedule, self.kernel, [m["prompt"] for m in items], items,
                              prompt_ids, seeds, **options)
        t1 = time.perf_counter()
        local_scores = self._score(rollout)
        scores = {k: self._gather(v) for k, v in local_scores.items()}
        groups = self._gather(rollout.group_ids)
        weights = {getattr(r, "name", type(r).__name__): w for r, w in self.rewards}
        adv = compute_advantages(scores, groups, weights=weights, mode=cfg.advantage.mode, std=cfg.advantage.std,
                                 clip=cfg.advantage.clip, eps=cfg.advantage.eps)
        n_local = len(rollout)
        sl = slice(self.rank * n_local, (self.rank + 1) * n_local)
        dev = rollout.x.device
        rollout.advantages, rollout.mask = adv.values[sl].to(dev), adv.mask[sl].to(dev)
        rollout.rewards = local_scores
        t2 = time.perf_counter()
        self.generator.denoiser.train()
        row.update(self._optimize(rollout, it))
        self.generator.denoiser.eval()
        t3 = time.perf_counter()

        main = next(iter(weights))
        for k, v in scores.items():
            row[f"reward/{k}/mean"] = float(v.mean())
        row["reward/mean"] = float(scores[main].mean())
        tags = [str(m.get("tag")) for m in rollout.metadata]
        for tag in sorted(set(tags) - {"None"}):  # per tag, this process's samples
            sel = torch.tensor([t == tag for t in tags])
            row[f"reward/tag/{tag}"] = float(local_scores[main][sel].mean())
        row["reward/std"] = float(scores[main].std(unbiased=False))
        row.update(adv.stats())
        row["lr"] = float(self.lr_schedule.get_last_lr()[0])
        row["time/rollout"], row["time/reward"], row["time/train"] = t1 - t0, t2 - t1, t3 - t2
        row["images_per_s"] = len(rollout) * self.world / max(t1 - t0, 1e-9)
        self.timings["rollout"] += t1 - t0
        self.timings["reward"] += t2 - t1
        self.timings["train"] += t3 - t2
        return row

    def _offline_iteration(self, it: int, batch: Any, data_seconds: float) -> dict[str, Any]:
        """An iteration of an algorithm that trains on a fixed data set: its ``offline_batch(it, generator)``
        (``len`` items with a ``mask``; ``prompts_per_iter x group_size`` of them globally) replaces rollout, reward
        and advantage; optimisation, logging, evaluation and checkpoints are the same as online."""
        t0 = time.perf_counter()
        self.generator.denoiser.train()
        row: dict[str, Any] = {"iteration": it, **self._optimize(batch, it)}
        self.generator.denoiser.eval()
        row["lr"] = float(self.lr_schedule.get_last_lr()[0])
        row["time/data"], row["time/train"] = data_seconds, time.perf_counter() - t0
        self.timings["data"] += data_seconds
        self.timings["train"] += row["time/train"]
        return row

    # ---- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, it: int) -> dict[str, Any] | None:
        """Deterministic sampler, more steps, the held-out prompts; writes evals/iter_XXXX/results.json."""
        if not self.cfg.eval.enabled or not self.test_items:
            return None
        from visalign.report.evaluation import evaluate_prompts

        t0 = time.perf_counter()
        result = None
        if self.is_main:
            ecfg = self.cfg.eval
            guidance = ecfg.guidance_scale if ecfg.guidance_scale is not None else self.cfg.sampling.guidance_scale
            schedule = self.generator.schedule(ecfg.num_steps)
            kernel = self.generator.make_kernel(DETERMINISTIC[self.family], 0.0, schedule)
            items = _stratified(self.test_items, ecfg.max_prompts) if ecfg.max_prompts else self.test_items

            def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
                return sample_deterministic(self.generator, schedule, kernel, prompts, seeds, guidance, ecfg.batch_size)

            use_ema = self.ema is not None and ecfg.use_ema and it > 0
            with torch.no_grad(), (self.ema.swapped() if use_ema else _nullcontext()):
                result = evaluate_prompts(
                    sample, items, self.run_dir / "evals" / f"iter_{it:04d}", ecfg.images_per_prompt, ecfg.seed,
                    rewards=self.rewards, grid_per_tag=self.cfg.log.grid_per_tag)
        self.accelerator.wait_for_everyone()
        self._last_eval_seconds = time.perf_counter() - t0
        self._eval_seconds_run += self._last_eval_seconds
        self.timings["eval"] += self._last_eval_seconds
        return result

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or continue) the run in ``run_dir``, holding its lock; a full disk or a read-only folder is a
        ``UserError`` naming the path."""
        lock = RunLock(self.run_dir, "train").acquire() if self.is_main else None
        try:
            if lock is not None and lock.stale_message():
                self._say(lock.stale_message())
            return self._run()
        except OSError as err:
            if err.errno not in _STORAGE_ERRNOS:
                raise
            raise UserError(f"{err.filename or self.run_dir}: {err.strerror}; the checkpoints already in "
                            f"{self.run_dir / 'checkpoints'} are intact") from None
        finally:
            if lock is not None:
                lock.release()

    def _say(self, message: str) -> None:
        if not self.is_main:
            return
        if self.console is not None:
            self.console.print(message, soft_wrap=True)
        else:
            print(message, file=sys.stderr)

    def _find_resume(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint to continue from and its state (``resume=auto``: the newest intact one)."""
        cfg = self.cfg
        if cfg.resume is None:
            return None, None
        if cfg.resume != "auto":
            path = resolve_resume(cfg.run_dir, cfg.resume)
            return path, load_checkpoint(path, self.fingerprint())
        path, state, skipped = load_latest_valid(cfg.run_dir, self.fingerprint())
        for reason in skipped:
            self._say(f"skipped a damaged checkpoint: {reason}")
        self._skipped = skipped
        return path, state

    def _start_over(self, metrics_path: Path) -> None:
        """``resume=auto`` with no checkpoint: the earlier attempt died before its first one; start afresh."""
        logged = sum(1 for line in metrics_path.read_text(errors="replace").splitlines() if line.strip())
        self._say(f"{self.run_dir}: no checkpoint to resume from; starting the run from the beginning "
                  f"(discarding the {logged} metrics lines of the attempt that stopped before its first checkpoint)")
        metrics_path.unlink()
        for stale in ("summary.json", "resumes.jsonl"):
            (self.run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / "evals", ignore_errors=True)

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        wall0 = time.perf_counter()
        self._skipped: list[str] = []
        resume_from, state = self._find_resume()
        metrics_path = self.run_dir / "metrics.jsonl"
        if resume_from is None and metrics_path.exists():
            if cfg.resume is None:
                raise UserError(f"{self.run_dir}: already holds a run (metrics.jsonl); continue it with --resume "
                                f"(resume=auto) or choose another run_dir")
            if self.is_main:
                self._start_over(metrics_path)
        if resume_from is not None and state is not None:
            changed = {}
            if state.get("config") is not None:
                changed = resume_changes(state["config"], cfg.model_dump(mode="json"), str(resume_from))
            self.load_state(state, resume_from)
            self._say(f"resuming from {resume_from} (iteration {self.start_iteration})"
                      + (f"; changed: {', '.join(changed)}" if changed else ""))
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
            if resume_from is not None:
                truncate_metrics(metrics_path, self.start_iteration)
                record_resume(self.run_dir, self.start_iteration, resume_from, changed, self._skipped)
        self.accelerator.wait_for_everyone()
        logger = MetricsLogger(self.run_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project,
                               config=cfg.model_dump(mode="json"), enabled=self.is_main)
        base_eval = None
        if self.start_iteration == 0:
            base_eval = self.evaluate(0)
            if base_eval is not None:
                logger.log({"iteration": 0, **_eval_row(base_eval)})
        else:
            base_eval = _read_eval(self.run_dir, 0)
        last_eval = base_eval
        end = cfg.train.iterations
        stop = min(end, cfg.stop_after) if cfg.stop_after is not None else end
        progress = TrainProgress(end, self.start_iteration, enabled=cfg.log.progress and self.is_main,
                                 console=self.console)
        it = self.start_iteration
        out_of_time = False
        with progress:
            if last_eval is not None:
                progress.update(it, eval_score=last_eval.get("overall"))
            for it in range(self.start_iteration + 1, stop + 1):
                row = self.iteration(it)
                self._check_finite(it, row)
                if not out_of_time and self._out_of_time(wall0, it):
                    out_of_time = True
                    end = stop = it
                    row["stopped_by_time_budget"] = True
                if cfg.eval.every and it % cfg.eval.every == 0 or it == end:
                    ev = self.evaluate(it)
                    if ev is not None:
                        last_eval = ev
                        row.update(_eval_row(ev))
                        row["time/eval"] = ev.get("seconds", 0.0)
                logger.log(row)
                if (cfg.checkpoint.every and it % cfg.checkpoint.every == 0) or it == stop:
                    self.save(it)
                progress.update(it, reward=row.get("reward/mean"),
                                eval_score=last_eval.get("overall") if last_eval else None)
                if out_of_time:
                    progress.print(f"time budget of {cfg.train.time_budget_min} min reached after iteration {it}")
                    break
        logger.close()
        self.timings["wall"] += time.perf_counter() - wall0
        summary = {"iterations_done": it, "iterations": cfg.train.iterations, "finished": it == end,
                   "stopped_by_time_budget": out_of_time,
                   "base": _headline(base_eval), "final": _headline(last_eval) if it == end else None,
                   "timings_s": dict(self.timings), "run_dir": str(self.run_dir)}
        if summary["final"] and summary["base"]:
            summary["improvement"] = summary["final"]["overall"] - summary["base"]["overall"]
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            if it == end:
                from visalign.report.html import build_report

                summary["report"] = str(build_report(self.run_dir))
        self.accelerator.wait_for_everyone()
        return summary

    def _check_finite(self, it: int, row: dict[str, Any]) -> None:
        """Stop the run, before iteration ``it`` is logged or saved, when its loss or the weights are not finite
        (the last checkpoint written stays the last good one)."""
        loss = row.get("loss")
        bad_loss = isinstance(loss, float) and not math.isfinite(loss)
        bad_weights = [n for n, p in self.generator.named_trainable() if not bool(torch.isfinite(p).all())]
        if not (bad_loss or bad_weights):
            return
        what = f"the loss is {loss}" if bad_loss else f"{len(bad_weights)} trainable tensors hold inf / NaN"
        good = [p.name for p in list_checkpoints(self.run_dir)]
        last = f"the last good checkpoint is {self.run_dir / 'checkpoints' / good[-1]}" if good else "no checkpoint was written"
        raise UserError(f"{self.run_dir}: training diverged at iteration {it}: {what} (grad norm "
                        f"{row.get('grad_norm')}, train.lr={self.cfg.train.lr}); {last}; lower train.lr or "
                        f"raise train.grad_clip")

    def _out_of_time(self, wall0: float, it: int) -> bool:
        """True when one more iteration plus the final evaluation would overrun ``train.time_budget_min``
        (decided on the main process, agreed by all)."""
        budget = self.cfg.train.time_budget_min
        if budget is None:
            return False
        elapsed = time.perf_counter() - wall0
        done = it - self.start_iteration
        per_iter = (elapsed - self._eval_seconds_run) / max(done, 1)
        final_eval = self._last_eval_seconds or 0.0
        stop = elapsed + per_iter + final_eval > budget * 60
        if self.world > 1:
            flag = torch.tensor([float(stop)], device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(flag, reduction="sum") > 0)
        return stop

    def close(self) -> None:
        """End the process group cleanly (a barrier first: a bare destroy can abort a gloo peer)."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def save(self, it: int) -> None:
        if self.is_main:
            save_checkpoint(self.run_dir, it, self.state_dict(it), self.fingerprint(), self.cfg.checkpoint.keep_last,
                            config=self.cfg.model_dump(mode="json"))
        self.accelerator.wait_for_everyone()


# a full disk, a read-only folder, no permission, a quota: the user's storage, not a bug
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _stratified(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` items taken round-robin over tags (so that a subset still covers every tag)."""
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_tag.setdefault(str(item.get("tag", "")), []).append(item)
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < min(n, len(items)):
        for rows in by_tag.values():
            if depth < len(rows) and len(out) < n:
                out.append(rows[depth])
        depth += 1
    return out


def _eval_row(ev: dict[str, Any]) -> dict[str, Any]:
    row = {"eval/overall": ev["overall"]}
    for k, v in (ev.get("per_tag") or {}).items():
        row[f"eval/tag/{k}"] = v
    if "soft" in ev:
        row["eval/soft"] = ev["soft"]
    return row


def _headline(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    return {k: ev[k] for k in ("overall", "per_tag", "soft") if k in ev}


def _read_eval(run_dir: Path, it: int) -> dict[str, Any] | None:
    path = run_dir / "evals" / f"iter_{it:04d}" / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None
