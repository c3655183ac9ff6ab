"""benchmarks/paired_reward.py: per-image differences of a reward between two folders sampled with the same seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark_scripts import load_benchmark
from visalign.eval.geneval_layout import write_prompt_folder


def _module():
    return load_benchmark("paired_reward")


def test_paired_difference_mean_and_standard_error_by_hand():
    paired = _module().paired
    base = {(0, 0): 1.0, (0, 1): 2.0, (1, 0): 3.0, (2, 0): 9.0}
    other = {(0, 0): 2.0, (0, 1): 2.0, (1, 0): 5.0}  # (2, 0) missing: only shared images are compared
    row = paired(base, other)
    # differences 1, 0, 2: mean 1, sample sd 1, standard error 1 / sqrt(3); one of three unchanged
    assert row["pairs"] == 3 and row["base_mean"] == 2.0 and row["other_mean"] == 3.0
    assert row["diff_mean"] == pytest.approx(1.0) and row["diff_se"] == pytest.approx(1 / math.sqrt(3))
    assert row["share_improved"] == pytest.approx(2 / 3)


def test_folders_are_paired_by_prompt_and_image_index(tmp_path):
    module = _module()
    flat = np.full((64, 64, 3), 128, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    meta = {
        "prompt": "a photo of a red circle",
        "tag": "single_object",
        "include": [{"class": "circle", "count": 1}],
    }
    write_prompt_folder(tmp_path / "a", 0, meta, [flat, noisy])
    write_prompt_folder(tmp_path / "b", 0, meta, [flat, flat])
    rows = module.main([str(tmp_path / "a"), str(tmp_path / "b"), "--reward", "jpeg_compressibility"])
    # image 0 is the same in both (difference 0); image 1 became flat, so its JPEG shrank (compressibility rose)
    assert rows[0]["pairs"] == 2 and rows[0]["share_improved"] == 0.5 and rows[0]["diff_mean"] > 0
