"""visalign.eval.pass_at_k: the unbiased pass@k estimator and its per-tag averaging by hand; benchmarks/pass_at_k.py
on a folder of rendered ground truth and wrong scenes."""

from __future__ import annotations

import itertools
from math import comb

import pytest

from benchmark_scripts import load_benchmark
from visalign.errors import UserError
from visalign.eval.geneval_layout import write_prompt_folder
from visalign.eval.pass_at_k import pass_at_k, prompt_counts, summarise
from visalign.worlds.shapes.prompts import load_split
from visalign.worlds.shapes.render import render_scene


def test_pass_at_k_by_hand():
    # 4 images, 1 right: a pair misses it in C(3,2) = 3 of C(4,2) = 6 pairs
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # 5 images, 2 right, 2 drawn: all-wrong pairs C(3,2) = 3 of 10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 is the share right
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    for n, c, k in [(4, 1, 5), (4, 5, 2), (4, -1, 2), (4, 1, 0)]:
        with pytest.raises(ValueError, match="0 <= c <= n and 1 <= k <= n"):
            pass_at_k(n, c, k)


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_image():
    # the estimator against brute force: every k-subset of n labelled images, counted
    for n, c in [(6, 0), (6, 1), (6, 3), (7, 2)]:
        images = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            hits = sum(any(s) for s in itertools.combinations(images, k))
            assert pass_at_k(n, c, k) == pytest.approx(hits / comb(n, k))


def test_summary_averages_prompts_within_tags_then_tags():
    rows = [("a", 4, 1), ("a", 4, 0), ("b", 4, 4)]
    out = summarise(rows, [1, 2])
    # tag a: pass@1 (0.25 + 0) / 2, pass@2 (0.5 + 0) / 2, one prompt of two never right; tag b: all 1
    assert out["tags"]["a"] == pytest.approx({"pass@1": 0.125, "pass@2": 0.25, "never_right": 0.5})
    assert out["tags"]["b"] == pytest.approx({"pass@1": 1.0, "pass@2": 1.0, "never_right": 0.0})
    # overall: the mean over tags, not over the three prompts (which would give 0.417 at pass@1)
    assert out["pass@1"] == pytest.approx(0.5625) and out["pass@2"] == pytest.approx(0.625)
    assert out["never_right"] == pytest.approx(0.25)
    assert out["prompts"] == 3 and out["images_per_prompt"] == 4


def test_summary_refuses_a_k_larger_than_a_prompts_images_and_an_empty_folder():
    with pytest.raises(UserError, match="at least 8 images per prompt; a prompt has 3"):
        summarise([("a", 4, 1), ("b", 3, 0)], [1, 8])
    with pytest.raises(UserError, match="at least one prompt"):
        summarise([], [1])
    with pytest.raises(UserError, match="positive integers"):
        summarise([("a", 4, 1)], [0])


def _folder(tmp_path, wrong_in_second: int):
    """Two test prompts of different tags, 4 renders each; the second prompt's first renders drawn from another
    prompt's scene, so the verifier rejects them."""
    items = load_split("test")
    first = next(m for m in items if m["tag"] == "single_object")
    second = next(m for m in items if m["tag"] == "colors")
    other = next(m for m in items if m["tag"] == "counting")
    write_prompt_folder(tmp_path, 0, first, [render_scene(first, s) for s in range(4)])
    scenes = [other] * wrong_in_second + [second] * (4 - wrong_in_second)
    write_prompt_folder(tmp_path, 1, second, [render_scene(m, 10 + s) for s, m in enumerate(scenes)])
    return first, second


def test_prompt_counts_score_rendered_ground_truth(tmp_path):
    first, second = _folder(tmp_path, wrong_in_second=3)
    assert prompt_counts(tmp_path) == [(first["tag"], 4, 4), (second["tag"], 4, 1)]


def test_script_prints_the_summary_of_a_folder(tmp_path, capsys):
    _folder(tmp_path, wrong_in_second=4)
    result = load_benchmark("pass_at_k").main([str(tmp_path), "--k", "1,4"])
    # single_object: always right; colors: never right
    assert result["pass@1"] == pytest.approx(0.5) and result["pass@4"] == pytest.approx(0.5)
    assert result["never_right"] == pytest.approx(0.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["tag", "pass@1", "pass@4", "never", "right"]
    assert lines[-2].split() == ["overall", "0.500", "0.500", "0.500"]
