"""visalign.eval.paired: per-image differences of a score between images drawn from the same prompts and seeds, by
hand; paired gains between two evaluations; benchmarks/paired_reward.py on two folders."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark
from visalign.errors import UserError
from visalign.eval.geneval_layout import write_prompt_folder
from visalign.eval.paired import folder_scores, paired, paired_gain


def test_paired_difference_mean_and_standard_error_by_hand():
    base = {(0, 0): 1.0, (0, 1): 2.0, (1, 0): 3.0, (2, 0): 9.0}
    other = {(0, 0): 2.0, (0, 1): 2.0, (1, 0): 5.0}  # (2, 0) missing: only shared images are compared
    row = paired(base, other)
    # differences 1, 0, 2: mean 1, sample sd 1, standard error 1 / sqrt(3); one of three unchanged
    assert row["pairs"] == 3 and row["base_mean"] == 2.0 and row["other_mean"] == 3.0
    assert row["diff_mean"] == pytest.approx(1.0) and row["diff_se"] == pytest.approx(1 / math.sqrt(3))
    assert row["share_improved"] == pytest.approx(2 / 3)


def test_pairing_removes_the_spread_the_two_sides_share():
    # a large per-image offset common to both sides (the seed's luck) and a constant gain of 0.1: unpaired, the
    # difference of the means would carry the offsets' spread; paired, the standard error is 0
    offsets = np.random.default_rng(0).normal(0, 5, 50)
    row = paired({i: float(o) for i, o in enumerate(offsets)}, {i: float(o) + 0.1 for i, o in enumerate(offsets)})
    assert row["diff_mean"] == pytest.approx(0.1) and row["diff_se"] == pytest.approx(0.0, abs=1e-12)
    assert row["share_improved"] == 1.0


def test_fewer_than_two_pairs_is_a_user_error():
    with pytest.raises(UserError, match="fewer than two images are paired"):
        paired({(0, 0): 1.0, (0, 1): 2.0}, {(0, 0): 1.0, (5, 0): 2.0})


def _results(path: Path, prompts: list[str], correct: list[bool]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"prompt": p, "correct": c} for p, c in zip(prompts, correct, strict=True)]
    path.write_text(json.dumps({"overall": sum(correct) / len(correct), "images": images}))
    return path


def test_paired_gain_between_two_evaluations_by_hand(tmp_path):
    prompts = ["a", "b", "c", "d"]
    first = _results(tmp_path / "iter_0000" / "results.json", prompts, [False, False, True, True])
    last = _results(tmp_path / "iter_0010" / "results.json", prompts, [True, True, True, False])
    gain = paired_gain(first, last)
    # per-image differences 1, 1, 0, -1: mean 1/4, sample sd sqrt(((3/4)^2 * 2 + (1/4)^2 + (5/4)^2) / 3)
    sd = math.sqrt((2 * 0.75**2 + 0.25**2 + 1.25**2) / 3)
    assert gain["pairs"] == 4
    assert gain["diff_mean"] == pytest.approx(0.25)
    assert gain["diff_se"] == pytest.approx(sd / 2)


def test_paired_gain_refuses_different_prompts(tmp_path):
    first = _results(tmp_path / "a" / "results.json", ["x", "y"], [True, False])
    last = _results(tmp_path / "b" / "results.json", ["y", "x"], [True, False])
    with pytest.raises(UserError, match="same prompts in the same order"):
        paired_gain(first, last)


def _answers(folder: Path, questions: list[str], scores: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"prompt": q, "type": "count", "answer": "1", "score": v} for q, v in zip(questions, scores, strict=True)]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_paired_answers_between_two_token_policy_evaluations_by_hand(tmp_path):
    from visalign.eval.paired import paired_answers

    questions = ["q1", "q2", "q3"]
    first = _answers(tmp_path / "iter_0000", questions, [0.0, 1.0, 0.0])
    last = _answers(tmp_path / "iter_0010", questions, [1.0, 1.0, 1.0])
    gain = paired_answers(first, last)
    # differences 1, 0, 1: mean 2/3, sample sd sqrt(((1/3)^2 * 2 + (2/3)^2) / 2)
    assert gain["diff_mean"] == pytest.approx(2 / 3)
    assert gain["diff_se"] == pytest.approx(math.sqrt((2 / 9 + 4 / 9) / 2) / math.sqrt(3))
    with pytest.raises(UserError, match="same questions in the same order"):
        paired_answers(first, _answers(tmp_path / "other", ["q2", "q1", "q3"], [0.0, 0.0, 0.0]))


META = {"prompt": "a photo of a red circle", "tag": "single_object", "include": [{"class": "circle", "count": 1}]}


def _two_folders(tmp_path: Path) -> tuple[Path, Path]:
    flat = np.full((64, 64, 3), 128, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_prompt_folder(tmp_path / "a", 0, META, [flat, noisy])
    write_prompt_folder(tmp_path / "b", 0, META, [flat, flat])
    return tmp_path / "a", tmp_path / "b"


def test_folder_scores_are_keyed_by_prompt_and_image(tmp_path):
    a, _ = _two_folders(tmp_path)
    scores = folder_scores(a, "jpeg_compressibility")
    assert list(scores) == [(0, 0), (0, 1)]
    assert scores[(0, 0)] > scores[(0, 1)]  # the flat image compresses better than the noise


def test_script_pairs_folders_by_prompt_and_image_index(tmp_path):
    a, b = _two_folders(tmp_path)
    rows = load_benchmark("paired_reward").main([str(a), str(b), "--reward", "jpeg_compressibility"])
    # image 0 is the same in both (difference 0); image 1 became flat, so its JPEG shrank (compressibility rose)
    assert rows[0]["pairs"] == 2 and rows[0]["share_improved"] == 0.5 and rows[0]["diff_mean"] > 0


def test_script_reports_a_missing_folder_in_one_line(tmp_path):
    a, _ = _two_folders(tmp_path)
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "paired_reward.py"), str(a), str(tmp_path / "nowhere"),
         "--reward", "jpeg_compressibility"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 2
    assert f"error: {tmp_path / 'nowhere'}: not a directory" in run.stderr and "Traceback" not in run.stderr
