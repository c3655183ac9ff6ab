"""The training loop of the reward model: minibatches of labelled pairs, two binary cross-entropies, AdamW.

The loss is binary cross-entropy of the soft logit against the verifier's soft score plus ``strict_weight``
times binary cross-entropy of the strict logit against its strict verdict. Generated pairs are drawn
``generated_weight`` times as often as synthetic ones. The learning rate warms up linearly, then follows a
cosine to 0 (``visalign.lr_schedule``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visalign.errors import UserError
from visalign.lr_schedule import lr_factor
from visalign.rewards.shapes_rm_model import RMConfig, ShapesRM
from visalign.rewards.shapes_rm_train.pairs import PairSet
from visalign.rewards.shapes_rm_train.streams import MINIBATCHES
from visalign.seeding import numpy_rng


@dataclass
class TrainSettings:
    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    strict_weight: float = 0.5
    generated_weight: float = 3.0  # sampling weight of a generated pair relative to a synthetic one
    seed: int = 0
    log_every: int = 100
    extra: dict[str, Any] = field(default_factory=dict)


def lr_at(step: int, s: TrainSettings) -> float:
    """The learning rate of optimizer step ``step``: ``s.lr`` times the cosine schedule's factor."""
    if step < s.warmup:
        # lr * (step + 1) / warmup, not lr * ((step + 1) / warmup): the two differ in the last bit at some
        # warm-up steps, and the shipped model was trained with these values
        return s.lr * (step + 1) / s.warmup
    return s.lr * lr_factor(step, s.warmup, s.steps, kind="cosine")


class _Batches:
    """The pairs as tensors, and minibatches drawn from them with the sources' weights."""

    def __init__(self, model: ShapesRM, pairs: PairSet, settings: TrainSettings) -> None:
        self.rng = numpy_rng(settings.seed + MINIBATCHES)
        self.size = settings.batch_size
        prompts = sorted({m["prompt"] for m in pairs.metadata})
        self.ids, self.lengths = model.token_ids(prompts)  # each distinct prompt tokenised once
        row = {p: i for i, p in enumerate(prompts)}
        self.pair_rows = np.array([row[m["prompt"]] for m in pairs.metadata])
        weights = np.where(np.array(pairs.source) == "generated", settings.generated_weight, 1.0)
        self.weights = weights / weights.sum()
        self.images = torch.from_numpy(np.ascontiguousarray(pairs.images))  # uint8, converted per batch
        self.soft = torch.from_numpy(pairs.soft)
        self.strict = torch.from_numpy(pairs.strict)

    def losses(self, model: ShapesRM) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(soft loss, strict loss, soft-score MAE) of the model on the next minibatch."""
        idx = self.rng.choice(len(self.pair_rows), size=self.size, p=self.weights)
        batch_rows, which = np.unique(self.pair_rows[idx], return_inverse=True)
        sel = torch.from_numpy(batch_rows)
        batch = self.images[torch.from_numpy(idx)].permute(0, 3, 1, 2).float().div_(255.0)
        out = model.forward_ids(batch, self.ids[sel], self.lengths[sel], torch.from_numpy(which))
        loss_soft = F.binary_cross_entropy_with_logits(out["soft"], self.soft[idx])
        loss_strict = F.binary_cross_entropy_with_logits(out["strict"], self.strict[idx])
        mae = float((torch.sigmoid(out["soft"].detach()) - self.soft[idx]).abs().mean())
        return loss_soft, loss_strict, mae


def train(
    train_set: PairSet,
    settings: TrainSettings,
    model: ShapesRM | None = None,
    progress: Any = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[ShapesRM, list[dict[str, float]]]:
    """Fit a reward model to ``train_set``'s verifier labels; returns the model (in eval mode), a loss log."""
    if not len(train_set):
        raise UserError(
            "train-shapes-rm: no training pairs (give --synthetic > 0, --generated DIR or --model)"
        )
    torch.manual_seed(settings.seed)  # before the model is built: its initial weights
    model = model if model is not None else ShapesRM(RMConfig())
    model.train()
    batches = _Batches(model, train_set, settings)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, float]] = []
    task = progress.add_task("train", total=settings.steps) if progress is not None else None
    running, t0 = [], time.perf_counter()
    for step in range(settings.steps):
        loss_soft, loss_strict, mae = batches.losses(model)
        loss = loss_soft + settings.strict_weight * loss_strict
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append((loss_soft.item(), loss_strict.item(), mae))
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            a = np.mean(running, axis=0)
            rec = {"step": step + 1, "loss_soft": float(a[0]), "loss_strict": float(a[1]), "mae": float(a[2]),
                   "wall": time.perf_counter() - t0}  # fmt: skip
            history.append(rec)
            running = []
            if log is not None:
                log(rec)
        if progress is not None:
            progress.update(task, advance=1)
    return model.eval(), history
