"""Pass rates per tag and overall, by GenEval's averaging rule: every score of the library that says "the share
of images (or prompts) that pass, per tag" is counted here.

For the values x_i of the images (or prompts) i of a tag (a 0/1 verdict, a soft score, a pass@k),

    rate(tag) = (1 / |tag|) sum_{i in tag} x_i,      overall = (1 / T) sum_tag rate(tag)

over the T tags present: every tag weighs the same, however many prompts it holds, so that a tag with many
prompts does not dominate. The sums run in the order of the values, so that a result is the same float wherever
it is computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def tag_groups(tags: Sequence[str | None], order: Sequence[str] | None = None) -> dict[str, list[int]]:
    """The positions of each tag in ``tags``, in ascending order.

    With ``order`` (e.g. ``vocab.TAGS``), the tags of ``order`` that occur, in that order (any other tag is left
    out); without it, every tag that occurs, sorted.
    """
    groups: dict[str, list[int]] = {}
    for i, tag in enumerate(tags):
        if tag is not None:
            groups.setdefault(tag, []).append(i)
    keys = [t for t in order if t in groups] if order is not None else sorted(groups)
    return {t: groups[t] for t in keys}


def tag_means(values: Sequence[float], groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """The mean of ``values`` over the positions of each group (``tag_groups``): ``rate(tag)`` above."""
    return {tag: sum(values[i] for i in idx) / len(idx) for tag, idx in groups.items()}


def mean_over_tags(per_tag: Mapping[str, float]) -> float:
    """The unweighted mean of the tags' rates (``overall`` above); 0.0 without any tag."""
    return sum(per_tag.values()) / len(per_tag) if per_tag else 0.0
