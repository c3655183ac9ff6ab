"""benchmarks/pass_at_k.py: the unbiased pass@k estimator and its per-tag averaging, by hand."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("pass_at_k")


def test_pass_at_k_by_enumeration():
    pass_at_k = _module().pass_at_k
    # 4 images, 1 right: a pair misses it in C(3,2) = 3 of C(4,2) = 6 pairs
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # 5 images, 2 right, 2 drawn: all-wrong pairs C(3,2) = 3 of 10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 is the share right
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_summary_averages_prompts_within_tags_then_tags():
    summarise = _module().summarise
    rows = [("a", 4, 1), ("a", 4, 0), ("b", 4, 4)]
    out = summarise(rows, [1, 2])
    # tag a: pass@1 (0.25 + 0) / 2, pass@2 (0.5 + 0) / 2, one prompt of two never right; tag b: all 1
    assert out["tags"]["a"] == pytest.approx({"pass@1": 0.125, "pass@2": 0.25, "never_right": 0.5})
    assert out["tags"]["b"] == pytest.approx({"pass@1": 1.0, "pass@2": 1.0, "never_right": 0.0})
    assert out["pass@1"] == pytest.approx(0.5625) and out["pass@2"] == pytest.approx(0.625)
    assert out["never_right"] == pytest.approx(0.25)
    with pytest.raises(SystemExit, match="at least 8 images"):
        summarise(rows, [8])
