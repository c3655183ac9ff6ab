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

import contextlib
import errno
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visalign.advantages import Advantages, compute_advantages
from visalign.algorithms import build_algorithm
from visalign.algorithms.base import RunContext
from visalign.checkpoint import find_resume, list_checkpoints, rng_state, save_checkpoint, set_rng_state
from visalign.config import Config, dump_config
from visalign.errors import UserError
from visalign.models import Generator
from visalign.models.ema import EMA
from visalign.optimization import MetricAverager, build_optimizer, sum_gradients
from visalign.prompts import PromptStream, load_prompts, train_prompts
from visalign.report.evaluation import eval_row, headline, read_eval
from visalign.report.metrics import MetricsLogger, truncate_metrics
from visalign.report.progress import TrainProgress
from visalign.rewards.base import Reward, check_metadata
from visalign.rewards.scoring import reward_metrics, reward_name, score_outputs
from visalign.rollout import Rollout
from visalign.rollout_engines import build_rollout_engine
from visalign.run_directory import RunLock, discard_unfinished_attempt, record_resume, resume_changes
from visalign.run_setup import build_rewards, load_model, make_generator, run_fingerprint
from visalign.seeding import sample_seed, torch_generator

# a full disk, a read-only folder, no permission, a quota: the user's storage, not a bug
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


@dataclass
class Collected:
    """An iteration's rollout after scoring: ``rollout.advantages`` / ``mask`` / ``rewards`` are set."""

    rollout: Any
    scores: dict[str, torch.Tensor]  # gathered over processes
    local_scores: dict[str, torch.Tensor]
    advantages: Advantages  # of the gathered batch
    rollout_seconds: float


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
        self.family, pipe, defaults = (pipeline[0], pipeline[1], {}) if pipeline is not None else load_model(cfg)
        pipe.to(self.accelerator.device)
        self.generator: Generator = make_generator(cfg, self.family, pipe, defaults, self.accelerator.device)

        # algorithm and the family's rollout engine (image generators: schedule, kernels, rollout plan)
        self.algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.options, source="algorithm.options")
        self._check_algorithm()
        # the run's config holds the effective advantage settings, so that its config.yaml reruns and resumes the
        # same way; what the algorithm's reference code changed is said when the run starts
        advantage = self.algorithm.advantage_settings(cfg.advantage)
        self._advantage_defaults = {k: v for k, v in advantage.model_dump().items() if v != getattr(cfg.advantage, k)}
        self.cfg = cfg = cfg.model_copy(update={"advantage": advantage})
        self.rollouts = build_rollout_engine(self.generator, cfg, self.algorithm)

        # rewards
        self.rewards = list(rewards) if rewards is not None else build_rewards(cfg)
        self._check_rewards()
        self.algorithm.bind(RunContext(rewards=self.rewards, seed=cfg.seed, rank=self.rank, world=self.world,
                                       samples_per_iter=cfg.data.prompts_per_iter * cfg.data.group_size,
                                       **self.rollouts.context()))

        # data
        self.train_items = train_prompts(cfg)
        self.test_items = (load_prompts(cfg.data.test, cfg.data.test_split, cfg.data.question_template)
                           if cfg.eval.enabled else [])
        second = cfg.eval.second_split if cfg.eval.enabled else None
        self.second_items = (load_prompts(second, cfg.data.test_split, cfg.data.question_template)
                             if second else [])
        # a prompt without the metadata a reward reads: say so now, naming the file, not after the first rollout
        check_metadata(self.rewards, self.train_items, cfg.data.train)
        check_metadata(self.rewards, self.test_items, cfg.data.test)
        if second:
            check_metadata(self.rewards, self.second_items, second)
        self.stream = PromptStream(len(self.train_items), cfg.seed)

        # optimisation
        params = self.generator.trainable_parameters()
        if not params:
            raise UserError("no trainable parameters (check finetune.target_modules)")
        self.optimizer, self.lr_schedule = build_optimizer(cfg, params)
        self.ema = EMA(list(self.generator.named_trainable()), cfg.train.ema.decay) if cfg.train.ema.enabled else None

        self.start_iteration = 0
        self.timings: dict[str, float] = defaultdict(float)
        self.last_eval: dict[str, Any] | None = None
        self._last_eval_seconds: float | None = None
        self._eval_seconds_run = 0.0

    # ---- construction helpers ------------------------------------------------------------------------------
    def _check_algorithm(self) -> None:
        cfg, algorithm = self.cfg, self.algorithm
        if not algorithm.supports_family(self.family):
            raise UserError(f"algorithm '{cfg.algorithm.name}' supports {algorithm.families} models, "
                            f"not '{self.family}' ({cfg.model.name})")
        missing = set(algorithm.needs) - set(self.generator.provides)
        if missing:
            raise UserError(f"algorithm '{cfg.algorithm.name}' needs {', '.join(sorted(missing))} from its "
                            f"rollouts, which '{self.family}' models ({cfg.model.name}) do not give")

    def _check_rewards(self) -> None:
        kind = self.generator.output_kind
        for reward, _weight in self.rewards:
            if getattr(reward, "output_kind", "image") != kind:
                raise UserError(f"reward '{reward_name(reward)}' scores {reward.output_kind} outputs, but "
                                f"'{self.family}' models ({self.cfg.model.name}) produce {kind} outputs")

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
            sum_gradients(params)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.lr_schedule.step()
        self.algorithm.on_optimizer_step()
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
        agg = MetricAverager()
        first_log_ratio = 0.0
        updates = 0
        grad_norms: list[float] = []
        pending = False
        for epoch in range(cfg.train.inner_epochs):
            g = torch_generator(sample_seed(cfg.seed, iteration, self.rank, epoch, stream="shuffle"))
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
        self.algorithm.on_iteration_start(it)
        row: dict[str, Any] = {"iteration": it}
        t0 = time.perf_counter()
        batch = self.algorithm.offline_batch(it, self.generator)
        if batch is not None:
            return self._offline_iteration(it, batch, time.perf_counter() - t0)
        collected = self.collect(it)
        rollout = collected.rollout
        t2 = time.perf_counter()
        self.generator.denoiser.train()
        row.update(self._optimize(rollout, it))
        self.generator.denoiser.eval()
        train_seconds = time.perf_counter() - t2

        main = reward_name(self.rewards[0][0])
        row.update(reward_metrics(collected.scores, collected.local_scores, rollout.metadata, main=main))
        row.update(collected.advantages.stats())
        row["lr"] = float(self.lr_schedule.get_last_lr()[0])
        rollout_seconds = collected.rollout_seconds
        reward_seconds = t2 - t0 - rollout_seconds  # scoring, advantages and picking the prompts
        row["time/rollout"], row["time/reward"], row["time/train"] = rollout_seconds, reward_seconds, train_seconds
        row["images_per_s"] = len(rollout) * self.world / max(rollout_seconds, 1e-9)
        self.timings["rollout"] += rollout_seconds
        self.timings["reward"] += reward_seconds
        self.timings["train"] += train_seconds
        return row

    def collect(self, it: int) -> Collected:
        """Iteration ``it``'s rollout, scored, with its advantages and zero-variance mask set: everything an update
        uses, without the update (``iteration`` goes on to optimise; ``visalign signal`` measures the gradient)."""
        items, prompt_ids, seeds = self._local_samples(it)
        self.generator.denoiser.eval()
        t0 = time.perf_counter()
        with self.algorithm.rollout_weights(self.generator):
            rollout = self.rollouts.rollout(it, self.algorithm, items, prompt_ids, seeds)
        rollout_seconds = time.perf_counter() - t0
        local_scores = score_outputs(self.rewards, rollout.outputs, rollout.prompts, rollout.metadata,
                                     rollout.group_ids)
        scores = {k: self._gather(v) for k, v in local_scores.items()}
        adv = self.advantages_of(scores, self._gather(rollout.group_ids))
        n_local = len(rollout)
        sl = slice(self.rank * n_local, (self.rank + 1) * n_local)
        dev = rollout.device
        rollout.advantages, rollout.mask = adv.values[sl].to(dev), adv.mask[sl].to(dev)
        rollout.rewards = local_scores
        return Collected(rollout, scores, local_scores, adv, rollout_seconds)

    def advantages_of(self, scores: dict[str, torch.Tensor], groups: torch.Tensor) -> Advantages:
        """The run's advantages (``advantage`` settings, reward weights) of gathered ``scores``."""
        a = self.cfg.advantage
        weights = {reward_name(r): w for r, w in self.rewards}
        return compute_advantages(scores, groups, weights=weights, mode=a.mode, std=a.std, clip=a.clip, eps=a.eps,
                                  std_correction=a.std_correction)

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
    def evaluate(self, it: int, second: bool = False) -> dict[str, Any] | None:
        """The held-out evaluation after iteration ``it`` (with the EMA weights if configured); writes
        ``evals/iter_XXXX/results.json`` (``second``: ``eval.second_split``'s, in ``evals/iter_XXXX/second/``)."""
        items = self.second_items if second else self.test_items
        if not self.cfg.eval.enabled or not items:
            return None
        t0 = time.perf_counter()
        result = None
        if self.is_main:
            use_ema = self.ema is not None and self.cfg.eval.use_ema and it > 0
            folder = self.run_dir / "evals" / f"iter_{it:04d}"
            with self.ema.swapped() if use_ema else contextlib.nullcontext():
                result = self.rollouts.evaluate(self.cfg, items, folder / "second" if second else folder,
                                                self.rewards)
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
            if self._advantage_defaults:
                self._say(f"advantage: {self.cfg.algorithm.name}'s reference settings {self._advantage_defaults} "
                          f"(set advantage.* in the config to override)")
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
        path, state, self._skipped = find_resume(self.cfg.run_dir, self.cfg.resume, self.fingerprint())
        for reason in self._skipped:
            self._say(f"skipped a damaged checkpoint: {reason}")
        return path, state

    def _open_run_dir(self) -> None:
        """Continue from a checkpoint (or start afresh) and write the run's ``config.yaml``."""
        cfg = self.cfg
        resume_from, state = self._find_resume()
        metrics_path = self.run_dir / "metrics.jsonl"
        if resume_from is None and metrics_path.exists():
            if cfg.resume is None:
                raise UserError(f"{self.run_dir}: already holds a run (metrics.jsonl); continue it with --resume "
                                f"(resume=auto) or choose another run_dir")
            if self.is_main:
                logged = discard_unfinished_attempt(self.run_dir)
                self._say(f"{self.run_dir}: no checkpoint to resume from; starting the run from the beginning "
                          f"(discarding the {logged} metrics lines of the attempt that stopped before its first "
                          f"checkpoint)")
        changed: dict[str, Any] = {}
        if resume_from is not None and state is not None:
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

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        wall0 = time.perf_counter()
        self._open_run_dir()
        logger = MetricsLogger(self.run_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project,
                               config=cfg.model_dump(mode="json"), enabled=self.is_main)
        if self.start_iteration == 0:
            base_eval = self.evaluate(0)
            base_second = self.evaluate(0, second=True)
            if base_eval is not None:
                logger.log({"iteration": 0, **eval_row(base_eval)})
        else:
            base_eval = read_eval(self.run_dir, 0)
            base_second = read_eval(self.run_dir, 0, second=True) if self.second_items else None
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
                        row.update(eval_row(ev))
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
        second = None
        if self.second_items:
            final_second = self.evaluate(it, second=True) if it == end else None
            second = {"split": self.cfg.eval.second_split, "base": headline(base_second),
                      "final": headline(final_second)}
            if second["base"] and second["final"]:
                second["improvement"] = second["final"]["overall"] - second["base"]["overall"]
        self.timings["wall"] += time.perf_counter() - wall0
        return self._finish(it, it == end, out_of_time, base_eval, last_eval, second)

    def _finish(self, it: int, finished: bool, out_of_time: bool, base_eval: dict[str, Any] | None,
                last_eval: dict[str, Any] | None, second: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` (and, at the end of the run, the HTML report); return the summary."""
        summary = {"iterations_done": it, "iterations": self.cfg.train.iterations, "finished": finished,
                   "stopped_by_time_budget": out_of_time,
                   "base": headline(base_eval), "final": headline(last_eval) if finished else None,
                   "timings_s": dict(self.timings), "run_dir": str(self.run_dir)}
        if summary["final"] and summary["base"]:
            summary["improvement"] = summary["final"]["overall"] - summary["base"]["overall"]
        if second is not None:
            summary["second_split"] = second
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            if finished:
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
