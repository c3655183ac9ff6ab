"""visalign.eval.pass_rate: per-tag rates and GenEval's unweighted mean over tags, by hand; ShapesBench and pass@k
count with it."""

from __future__ import annotations

import pytest

from visalign.eval.pass_at_k import summarise as pass_at_k_summary
from visalign.eval.pass_rate import mean_over_tags, tag_groups, tag_means
from visalign.eval.shapesbench import summarise as shapesbench_summary


def test_tag_groups_in_a_given_order_or_sorted():
    tags = ["text", "colors", None, "text", "vibes", "colors", "colors"]
    assert tag_groups(tags, order=("colors", "counting", "text")) == {"colors": [1, 5, 6], "text": [0, 3]}
    assert tag_groups(tags) == {"colors": [1, 5, 6], "text": [0, 3], "vibes": [4]}


def test_rates_per_tag_and_the_unweighted_mean_over_tags():
    groups = tag_groups(["a", "a", "a", "b"])
    per_tag = tag_means([True, False, False, True], groups)
    assert per_tag == {"a": pytest.approx(1 / 3), "b": 1.0}
    # every tag weighs the same: (1/3 + 1) / 2, not the 2/4 of the images
    assert mean_over_tags(per_tag) == pytest.approx(2 / 3)
    assert mean_over_tags({}) == 0.0


def test_shapesbench_and_pass_at_1_agree_on_the_same_verdicts():
    rows = [{"tag": "colors", "correct": c, "score": 0.5} for c in (True, False)]
    rows += [{"tag": "text", "correct": c, "score": 1.0} for c in (True, True, True, False)]
    bench = shapesbench_summary(rows)
    # one prompt per tag, every image of it a try: pass@1 is the tag's share right
    counts = [("colors", 2, 1), ("text", 4, 3)]
    assert pass_at_k_summary(counts, [1])["pass@1"] == pytest.approx(bench["overall"]) == pytest.approx(0.625)
    assert bench["per_tag"] == {"colors": 0.5, "text": 0.75} and bench["n_per_tag"] == {"colors": 2, "text": 4}
