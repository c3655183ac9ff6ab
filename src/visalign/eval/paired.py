"""Paired differences of a per-image score between two sets of images drawn from the same prompts and seeds.

``visalign sample`` seeds image j of prompt i the same way for every model, and every held-out evaluation of a
run samples the same prompts from the same seeds with the deterministic sampler, so image (i, j) of two folders
(or of two evaluations) starts from the same noise and differs only by the weights. Over the n keys both share,

    d_k = other_k - base_k,      mean = (1 / n) sum_k d_k,      se = sd(d) / sqrt(n),

with sd the sample standard deviation (n - 1 in the denominator). The per-image difference has far less spread
than either score, so ``mean +- se`` says whether a change is real where the two scores' own noise would not:
a gain counts when it exceeds about two standard errors.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TypedDict

from visalign.errors import UserError


class PairedDifference(TypedDict):
    pairs: int  # keys both sides share
    base_mean: float
    other_mean: float
    diff_mean: float  # mean of other - base
    diff_se: float  # its standard error
    share_improved: float  # share of keys where other > base


def paired(base: Mapping[Hashable, float], other: Mapping[Hashable, float]) -> PairedDifference:
    """Mean and standard error of ``other - base`` over the keys both hold (formulas in the module docstring)."""
    keys = [k for k in base if k in other]  # base's order: deterministic, and keys need not sort
    if len(keys) < 2:
        raise UserError("fewer than two images are paired; sample both sides from the same prompts and seeds")
    diffs = [other[k] - base[k] for k in keys]
    n = len(keys)
    return {
        "pairs": n,
        "base_mean": math.fsum(base[k] for k in keys) / n,
        "other_mean": math.fsum(other[k] for k in keys) / n,
        "diff_mean": math.fsum(diffs) / n,
        "diff_se": statistics.stdev(diffs) / math.sqrt(n),
        "share_improved": sum(d > 0 for d in diffs) / n,
    }


def paired_gain(first: str | Path, last: str | Path) -> PairedDifference:
    """Strict-score gain between two held-out evaluations (``results.json`` of ``visalign eval``), image by image.

    Image i of both must answer the same prompt; a different order would pair unrelated images.
    """
    a, b = (json.loads(Path(p).read_text())["images"] for p in (first, last))
    if [x["prompt"] for x in a] != [x["prompt"] for x in b]:
        raise UserError(f"{first} and {last} do not hold the same prompts in the same order")
    return paired({i: float(x["correct"]) for i, x in enumerate(a)}, {i: float(x["correct"]) for i, x in enumerate(b)})


def paired_answers(first: str | Path, last: str | Path) -> PairedDifference:
    """Exact-match gain between two held-out evaluations of a token policy (their ``answers.jsonl``), question by
    question: item i of both must be the same question."""
    from visalign.jsonl import read_log

    a, b = (read_log(Path(p) / "answers.jsonl", "answer line") for p in (first, last))
    if [x["prompt"] for x in a] != [x["prompt"] for x in b]:
        raise UserError(f"{first} and {last} do not hold the same questions in the same order")
    return paired({i: float(x["score"]) for i, x in enumerate(a)}, {i: float(x["score"]) for i, x in enumerate(b)})


def folder_scores(folder: str | Path, reward: str) -> dict[tuple[int, int], float]:
    """A registered reward of every image of a GenEval-layout folder, keyed by (prompt index, image index)."""
    from visalign.eval.folder_rewards import prompt_scores

    return {
        (index, j): float(value)
        for index, _, scores in prompt_scores(folder, reward)
        for j, value in enumerate(scores.tolist())
    }
