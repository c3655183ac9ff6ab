"""report/figures.py: the before / after sheet pairs each first-evaluation image with the last evaluation's image of
the same prompt and seed, and captions each with the verdict that evaluation's results.json gives it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from visalign.report.figures import _verdict, _verdicts, before_after_sheet, write_figures


def _eval_dir(root: Path, name: str, samples: list[tuple[int, str, str, int]], correct: dict[int, bool],
              shade: int) -> Path:
    """An evaluation folder as report/evaluation.py writes it: samples/NNNN.png + index.json, results.json."""
    d = root / name
    (d / "samples").mkdir(parents=True)
    index = []
    for i, tag, prompt, seed in samples:
        Image.fromarray(np.full((8, 8, 3), shade, dtype=np.uint8)).save(d / "samples" / f"{i:04d}.png")
        index.append({"file": f"{i:04d}.png", "tag": tag, "prompt": prompt, "seed": seed})
    (d / "samples" / "index.json").write_text(json.dumps(index))
    n = max(i for i, *_ in samples) + 1
    prompt_of = {i: p for i, _, p, _ in samples}
    images = [{"prompt": prompt_of.get(i, "other"), "correct": correct.get(i, False)} for i in range(n)]
    (d / "results.json").write_text(json.dumps({"overall": 0.0, "images": images}))
    return d


def test_verdicts_come_from_the_results_row_of_the_sample_index(tmp_path):
    samples = [(0, "colors", "a red circle", 11), (2, "colors", "a blue square", 12), (4, "counting", "two dots", 13)]
    first = _eval_dir(tmp_path, "iter_0000", samples, {0: True, 2: False, 4: False}, shade=10)
    last = _eval_dir(tmp_path, "iter_0030", samples, {0: False, 2: True, 4: True}, shade=200)
    rows_first, rows_last = _verdicts(first), _verdicts(last)
    assert [_verdict(rows_first, {"file": f"{i:04d}.png", "prompt": p}) for i, _, p, _ in samples] == [
        " [right]", " [wrong]", " [wrong]"]
    assert [_verdict(rows_last, {"file": f"{i:04d}.png", "prompt": p}) for i, _, p, _ in samples] == [
        " [wrong]", " [right]", " [right]"]
    # a results row of another prompt (a mismatched folder) gives no verdict rather than a wrong one
    assert _verdict(rows_first, {"file": "0001.png", "prompt": "a red circle"}) == ""

    sheet = np.asarray(before_after_sheet(first, last, per_tag=1, scale=2))
    # one image per tag (colors, counting): two pairs, four cells of 16 px in one row
    cells = [sheet[4:20, 4 + k * 20:20 + k * 20] for k in range(4)]
    assert [int(c.mean()) for c in cells] == [10, 200, 10, 200]
    assert sheet.shape[1] == 4 * (16 + 4) + 4


def test_write_figures_writes_what_has_data(tmp_path):
    samples = [(0, "colors", "a red circle", 11)]
    evals = [_eval_dir(tmp_path, "evals_0", samples, {0: True}, 50), _eval_dir(tmp_path, "evals_1", samples, {}, 90)]
    rows = [{"iteration": 0, "reward/mean": 0.1, "reward/std": 0.05, "eval/overall": 0.2},
            {"iteration": 1, "reward/mean": 0.3, "reward/std": 0.05, "eval/overall": 0.4}]
    written = write_figures(tmp_path, rows, evals)
    assert sorted(written) == ["before_after", "eval_curve", "reward_curve"]
    for path in written.values():
        assert Image.open(path).size[0] > 0
    assert write_figures(tmp_path / "empty", [], []) == {}
    assert not (tmp_path / "empty" / "figures").exists()
