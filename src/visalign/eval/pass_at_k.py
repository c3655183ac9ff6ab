"""pass@k of a sample folder: the share of prompts a model gets right at least once in k tries.

For a prompt with n images of which c are right, the unbiased estimator of Chen et al. (2021, "Evaluating Large
Language Models Trained on Code") is

    pass@k = 1 - C(n - c, k) / C(n, k),

the probability that k images drawn without replacement from the n include a right one. Averaged as ShapesBench
averages (the mean over the prompts of a tag, then the unweighted mean over tags), pass@1 is the folder's strict
score and pass@k the score of a policy that always drew the best of k of the model's own samples: the ceiling of
what sharpening alone (reinforcement learning from a verifier, mostly) could reach. A prompt never right gives a
group of equal strict rewards, hence no advantage, so ``never_right`` is the share of prompts that cannot teach.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from pathlib import Path

from visalign.errors import UserError
from visalign.eval.pass_rate import mean_over_tags, tag_groups, tag_means

# (tag, images of the prompt, right images of the prompt)
PromptCount = tuple[str, int, int]


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k): the chance that at least one of k of the n images (c right) is right."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarise(rows: Sequence[PromptCount], ks: Sequence[int]) -> dict:
    """pass@k and the share of prompts never right, per tag (mean over prompts) and overall (mean over tags).

    Returns ``{"prompts", "images_per_prompt", "tags": {tag: {"pass@k": ..., "never_right": ...}}, "pass@k": ...,
    "never_right": ...}``; ``images_per_prompt`` is the smallest count, which bounds every k.
    """
    if not rows:
        raise UserError("pass@k needs at least one prompt; the folder has none")
    if not ks or min(ks) < 1:
        raise UserError(f"k values must be positive integers, got {list(ks)}")
    n_min = min(n for _, n, _ in rows)
    if max(ks) > n_min:
        raise UserError(f"k = {max(ks)} needs at least {max(ks)} images per prompt; a prompt has {n_min}")
    groups = tag_groups([tag for tag, _, _ in rows])
    per_key = {f"pass@{k}": tag_means([pass_at_k(n, c, k) for _, n, c in rows], groups) for k in ks}
    per_key["never_right"] = tag_means([c == 0 for _, _, c in rows], groups)
    out: dict = {"prompts": len(rows), "images_per_prompt": n_min}
    out["tags"] = {tag: {key: rates[tag] for key, rates in per_key.items()} for tag in groups}
    out.update({key: mean_over_tags(rates) for key, rates in per_key.items()})
    return out


def prompt_counts(folder: str | Path, reward: str = "shapes_strict") -> list[PromptCount]:
    """(tag, images, right images) for every prompt of a GenEval-layout folder; right = a strict reward above 0.5."""
    from visalign.eval.folder_rewards import prompt_scores

    return [(md["tag"], len(scores), int((scores > 0.5).sum())) for _, md, scores in prompt_scores(folder, reward)]
