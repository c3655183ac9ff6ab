"""ShapesWorld verifier rewards: GenEval's strict rules (0/1), a soft partial-credit score in [0, 1], and a graded
score that follows the verifier's measurements continuously (``shapes_graded``).

Both wrap ``visalign.worlds.shapes.verifier.verify_batch`` (classical image analysis against the prompt's
GenEval-style metadata; each metadata carries a ``"tag"`` from ``visalign.worlds.shapes.vocab.TAGS``).
The main key is the chosen score; the other one is returned as a logged component. ``per_tag_means``
breaks a batch's scores down by tag for logging. Not differentiable.

The learned ShapesWorld reward model (a small network trained on verifier labels) registers itself in its
own module, ``rewards/shapes_rm.py``, under ``shapes_rm``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from visalign.rewards.base import Reward, RewardError, register_reward


def verdict_scores(images: torch.Tensor, metadata: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(strict 0/1, soft in [0, 1]) tensors for a batch, from the ShapesWorld verifier."""
    from visalign.worlds.shapes.verifier import verify_batch

    _check_metadata(metadata)
    return verdict_tensors(verify_batch(images.detach(), list(metadata)))


def verdict_tensors(verdicts: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(strict 0/1, soft) float32 tensors of the verifier's ``Verdict`` list."""
    strict = torch.tensor([1.0 if v.correct else 0.0 for v in verdicts], dtype=torch.float32)
    soft = torch.tensor([float(v.score) for v in verdicts], dtype=torch.float32)
    return strict, soft


def _check_metadata(metadata: Sequence[dict[str, Any]]) -> None:
    for i, meta in enumerate(metadata):
        if not meta:
            raise RewardError(f"ShapesWorld reward: batch position {i} has no metadata (a ShapesWorld prompt needs it)")


def per_tag_means(scores: torch.Tensor, metadata: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean score per ShapesWorld tag present in the batch (``{tag: mean}``, in ``TAGS`` order), for logging."""
    from visalign.eval.pass_rate import tag_groups
    from visalign.worlds.shapes.vocab import TAGS

    groups = tag_groups([m.get("tag") for m in metadata], TAGS)
    # the mean of the tensor itself (float32), not of its values as Python floats: the logged numbers stay the same
    return {tag: float(scores[idx].float().mean()) for tag, idx in groups.items()}


# The verifier judges an image against the prompt's GenEval-style metadata (every tag, "text" included, has one)
NEEDS_METADATA = ("tag",)


class _ShapesVerifierReward(Reward):
    """The verifier's two scores: the one named like the reward comes first, the other is logged beside it (a
    subclass may put a score of its own first, with both beside it)."""

    differentiable = False
    groupwise = False
    output_range = (0.0, 1.0)
    needs_metadata = NEEDS_METADATA

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        strict, soft = verdict_scores(images, metadata)
        both = {"shapes_strict": strict, "shapes_soft": soft}
        return {self.name: both[self.name], **{k: v for k, v in both.items() if k != self.name}}


@register_reward("shapes_strict")
class ShapesStrict(_ShapesVerifierReward):
    """1 if the image satisfies every GenEval rule of its metadata, else 0 (component: ``shapes_soft``)."""

    name = "shapes_strict"
    summary = "ShapesWorld verifier, GenEval rules, 0/1"


@register_reward("shapes_soft")
class ShapesSoft(_ShapesVerifierReward):
    """Partial credit in [0, 1] (component: ``shapes_strict``)."""

    name = "shapes_soft"
    summary = "ShapesWorld verifier, partial credit"


@register_reward("shapes_graded")
class ShapesGraded(_ShapesVerifierReward):
    """The verifier's measurements as a continuous score in [0, 1] (``worlds/shapes/graded.py``): shape-template
    correlation, colour distance, relation margin, count of matching objects; exactly 1 when the strict verdict is
    correct, below 1 otherwise. Components: ``shapes_strict`` and ``shapes_soft`` (the judges of every reported
    score; a run whose graded reward rises while strict does not is gaming the graded score)."""

    name = "shapes_graded"
    summary = "ShapesWorld verifier measurements as a continuous score (1 iff strict); components strict, soft"

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        from visalign.worlds.shapes.graded import graded_batch

        _check_metadata(metadata)
        verdicts, graded = graded_batch(images.detach(), list(metadata))
        strict, soft = verdict_tensors(verdicts)
        return {self.name: torch.tensor(graded, dtype=torch.float32), "shapes_strict": strict, "shapes_soft": soft}


@register_reward("shapes_pairwise")
class ShapesPairwise(Reward):
    """The verifier as a pairwise judge: Pref-GRPO's win rate within a group (groupwise).

    Image i beats image j when its soft score exceeds j's by more than ``tie_margin``; closer pairs are ties
    (1/2 each). The reward of image i is its mean outcome against the other images of its group
    (``vlm_judge.win_rates``), as in Pref-GRPO with a VLM judge, but offline and deterministic, so the recipe runs
    on CPU. Components: the soft and strict scores (logged, so the win rate can be compared with them).
    """

    name = "shapes_pairwise"
    summary = "ShapesWorld verifier as a pairwise judge, Pref-GRPO win rate (groupwise)"
    differentiable = False
    groupwise = True
    output_range = (0.0, 1.0)
    needs_metadata = NEEDS_METADATA

    def __init__(self, tie_margin: float = 0.0) -> None:
        problem = next(self.option_problems({"tie_margin": tie_margin}), None)
        if problem is not None:
            raise RewardError(problem[1])
        self.tie_margin = float(tie_margin)

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Values the constructor refuses, found when a recipe loads (``rewards.base.reward_option_problems``)."""
        margin = options.get("tie_margin", 0.0)
        if isinstance(margin, (int, float)) and margin < 0:
            yield "tie_margin", f"reward 'shapes_pairwise': tie_margin must be >= 0, got {margin}"

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        from visalign.rewards.vlm_judge import win_rates

        if len(set(prompts)) != 1:
            raise RewardError("reward 'shapes_pairwise' is groupwise: pass the images of one prompt at a time")
        strict, soft = verdict_scores(images, metadata)
        diff = soft[:, None] - soft[None, :]
        outcome = torch.where(diff > self.tie_margin, 1.0, torch.where(diff < -self.tie_margin, 0.0, 0.5))
        return {self.name: win_rates(outcome), "shapes_soft": soft, "shapes_strict": strict}
