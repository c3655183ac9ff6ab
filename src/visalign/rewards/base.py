"""The reward contract (DESIGN.md section 3).

A reward sees only images, prompts and metadata:

    reward(images, prompts, metadata) -> {name: tensor[B]}

* ``images``: float tensor ``[B, 3, H, W]`` in ``[0, 1]`` (for a differentiable reward, gradients flow
  through it; otherwise it is detached by the caller).
* ``prompts``: ``list[str]`` of length B.
* ``metadata``: ``list[dict]`` of length B (GenEval-style metadata for ShapesWorld prompts, ``{}`` otherwise).
* the result maps one or more score names to float tensors of shape ``[B]``. The first key is the
  reward's main score; extra keys are logged components (e.g. per-tag scores).

Flags: ``differentiable`` (scores can be back-propagated to the images), ``groupwise`` (scores depend on
the whole group, e.g. a pairwise win rate: then the caller passes one group at a time).
A reward that returns NaN/inf or the wrong shape raises ``RewardError`` naming the reward
(``check_scores``); nothing is ever silently zeroed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch


class RewardError(RuntimeError):
    """A reward produced invalid output or could not be computed."""


class Reward:
    """Base class of every reward. Subclasses implement ``score`` and set the class flags."""

    name: ClassVar[str] = "reward"
    differentiable: ClassVar[bool] = False
    groupwise: ClassVar[bool] = False
    output_range: ClassVar[tuple[float, float]] = (float("-inf"), float("inf"))
    summary: ClassVar[str] = ""  # one line for `visalign rewards list` (what it scores, the paper)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, torch.Tensor]:
        if metadata is None:
            metadata = [{} for _ in prompts]
        if images.ndim != 4 or images.shape[1] != 3:
            raise RewardError(f"reward '{self.name}': expected images [B, 3, H, W], got {tuple(images.shape)}")
        if not (len(prompts) == len(metadata) == images.shape[0]):
            raise RewardError(
                f"reward '{self.name}': {images.shape[0]} images, {len(prompts)} prompts, {len(metadata)} metadata"
            )
        scores = self.score(images, prompts, metadata)
        check_scores(self.name, scores, images.shape[0])
        return scores


def check_scores(name: str, scores: Any, batch: int) -> None:
    """Raise ``RewardError`` naming the reward if ``scores`` is not ``{str: finite float tensor[batch]}``."""
    if not isinstance(scores, dict) or not scores:
        raise RewardError(f"reward '{name}' must return a non-empty dict of tensors, got {type(scores).__name__}")
    for key, value in scores.items():
        if not isinstance(value, torch.Tensor):
            raise RewardError(f"reward '{name}' score '{key}' is a {type(value).__name__}, not a tensor")
        if value.shape != (batch,):
            raise RewardError(f"reward '{name}' score '{key}' has shape {tuple(value.shape)}, expected ({batch},)")
        if not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).nonzero().flatten().tolist()
            raise RewardError(f"reward '{name}' score '{key}' is NaN/inf at batch positions {bad}")


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Class decorator: make a reward constructible by name from configs and the CLI."""

    def wrap(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REGISTRY:
            raise ValueError(f"reward '{name}' registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered_rewards() -> dict[str, Callable[..., Reward]]:
    from visalign.rewards import _load_builtin  # noqa: F401  (registers the built-in rewards)

    return dict(_REGISTRY)


def build_reward(name: str, **kwargs: Any) -> Reward:
    from visalign.errors import UserError

    registry = registered_rewards()
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown reward '{name}'{hint}; known: {', '.join(sorted(registry))}")
    return registry[name](**kwargs)
