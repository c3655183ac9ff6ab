"""benchmarks/compare_algorithms.py: the table's strict gain is paired image by image between two evaluations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("compare_algorithms")


def _results(path: Path, prompts: list[str], correct: list[bool]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"prompt": p, "correct": c} for p, c in zip(prompts, correct, strict=True)]
    path.write_text(json.dumps({"overall": sum(correct) / len(correct), "images": images}))
    return path


def test_paired_gain_by_hand(tmp_path):
    prompts = ["a", "b", "c", "d"]
    first = _results(tmp_path / "iter_0000" / "results.json", prompts, [False, False, True, True])
    last = _results(tmp_path / "iter_0010" / "results.json", prompts, [True, True, True, False])
    gain = _module().paired_gain(first, last)
    # per-image differences 1, 1, 0, -1: mean 1/4, sample sd sqrt(((3/4)^2 * 2 + (1/4)^2 + (5/4)^2) / 3)
    sd = math.sqrt((2 * 0.75**2 + 0.25**2 + 1.25**2) / 3)
    assert gain["pairs"] == 4
    assert gain["diff_mean"] == pytest.approx(0.25)
    assert gain["diff_se"] == pytest.approx(sd / 2)


def test_paired_gain_refuses_different_prompts(tmp_path):
    first = _results(tmp_path / "a" / "results.json", ["x", "y"], [True, False])
    last = _results(tmp_path / "b" / "results.json", ["y", "x"], [True, False])
    with pytest.raises(SystemExit, match="same prompts"):
        _module().paired_gain(first, last)
