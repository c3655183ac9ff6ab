"""The VLM quickstart recipe runs end to end through the user's path (a Qwen2-VL folder named by ``model.name``):
held-out exact match before and after in ``summary.json`` with the per-type scores, and the report's question grid.
The learning gain itself is a measurement (``benchmarks/compare_token_algorithms.py``), not a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visalign.config import load_train_config
from visalign.models.vlm_build import TinyVLMSpec, build_vlm, save_vlm
from visalign.trainer import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "vlm_quickstart.yaml"
SMALL = TinyVLMSpec(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64, vision_dim=16,
                    vision_depth=1, vision_heads=2, mrope_section=(2, 3, 3))


def test_the_vlm_quickstart_recipe_trains_and_reports(tmp_path):
    folder = save_vlm(*build_vlm(SMALL, seed=0), tmp_path / "tiny-vlm")
    cfg = load_train_config(RECIPE, [f"run_dir={tmp_path / 'run'}", f"model.name={folder}", "train.iterations=2",
                                     "data.prompts_per_iter=2", "data.group_size=3", "train.minibatch_size=3",
                                     "eval.max_prompts=7", "log.progress=false", "train.threads=1"])
    assert cfg.algorithm.name == "grpo" and cfg.finetune.mode == "full"
    summary = Trainer(cfg).run()
    assert summary["finished"]
    for side in ("base", "final"):
        scores = summary[side]
        assert set(scores["per_tag"]) == {"count", "color", "shape", "relation_yesno", "relation_which", "text",
                                          "grounding"}  # eval.max_prompts takes every type (stratified)
        assert 0.0 <= scores["overall"] <= 1.0 and "held_out" in scores
    assert summary["improvement"] == pytest.approx(summary["final"]["overall"] - summary["base"]["overall"])
    answers = [json.loads(x) for x in (tmp_path / "run" / "evals" / "iter_0000" / "answers.jsonl").open()]
    # exact match: a right answer scores 1, anything else 0 (a box by IoU >= 0.5), never the IoU itself
    assert all(a["score"] in (0.0, 1.0) for a in answers)
    results = json.loads((tmp_path / "run" / "evals" / "iter_0000" / "results.json").read_text())
    assert results["overall"] == pytest.approx(sum(a["score"] for a in answers) / len(answers))
    assert results["overall"] == pytest.approx(results["rewards"]["shapes_answer/answer_correct"])
    assert 'alt="question image"' in (tmp_path / "run" / "report.html").read_text()
