"""Scoring a rollout's outputs (images, or a token policy's answers) with a run's rewards: the one place the
engine calls a ``Reward``.

Each reward is called on the whole batch, or group by group when it declares ``groupwise`` (a reward that ranks the
members of a group against each other). Its first score is the reward (named by the reward); any further scores
it returns are logged as ``name/score``. Scores are checked (one finite value per image) and returned as float32
CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visalign.rewards.base import Reward, check_scores


def reward_name(reward: Reward) -> str:
    """The name a reward's scores are logged and weighted under."""
    return getattr(reward, "name", type(reward).__name__)


def _call(reward: Reward, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]],
          group_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    if not getattr(reward, "groupwise", False):
        return reward(outputs, list(prompts), list(metadata))
    parts: list[dict[str, torch.Tensor]] = []
    for gid in group_ids.unique(sorted=True):
        idx = (group_ids == gid).nonzero().flatten()
        part = outputs[idx] if isinstance(outputs, torch.Tensor) else [outputs[int(i)] for i in idx]
        parts.append(reward(part, [prompts[i] for i in idx], [metadata[i] for i in idx]))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def score_outputs(rewards: Sequence[tuple[Reward, float]], outputs: torch.Tensor | Sequence[str],
                  prompts: Sequence[str], metadata: Sequence[dict[str, Any]],
                  group_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every reward's scores of a rollout's ``outputs`` (images ``[N, 3, H, W]`` in [0, 1], or answer texts):
    ``{name: [N], name/extra: [N], ...}``.

    Groupwise rewards see each group alone; ``group_ids`` must then list the groups in sorted order, as a
    rollout's do (the scores are concatenated group by group)."""
    if isinstance(outputs, torch.Tensor):
        outputs = outputs.detach()
    out: dict[str, torch.Tensor] = {}
    for reward, _weight in rewards:
        name = reward_name(reward)
        scores = _call(reward, outputs, prompts, metadata, group_ids)
        check_scores(name, scores, len(outputs))
        main = next(iter(scores))
        out[name] = scores[main].detach().float().cpu()
        for k, v in scores.items():
            if k != main:
                out[f"{name}/{k}"] = v.detach().float().cpu()
    return out


def reward_metrics(scores: dict[str, torch.Tensor], local_scores: dict[str, torch.Tensor],
                   metadata: Sequence[dict[str, Any]], main: str) -> dict[str, float]:
    """Metrics-log entries of an iteration's scores: each score's mean and, for the ``main`` reward, its mean, its
    population std and (over this process's samples, ``local_scores`` / ``metadata``) its mean per prompt tag (or
    question type)."""
    row = {f"reward/{k}/mean": float(v.mean()) for k, v in scores.items()}
    row["reward/mean"] = float(scores[main].mean())
    tags = [str(m.get("tag", m.get("type"))) for m in metadata]  # a prompt's tag, or a question's type
    for tag in sorted(set(tags) - {"None"}):
        sel = torch.tensor([t == tag for t in tags])
        row[f"reward/tag/{tag}"] = float(local_scores[main][sel].mean())
    row["reward/std"] = float(scores[main].std(unbiased=False))
    return row
