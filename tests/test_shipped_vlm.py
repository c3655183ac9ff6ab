"""The shipped tiny VLM: its folder loads with the stock transformers auto class, it is small, and its card's
numbers are what the weights beside it score now."""

from __future__ import annotations

import json

from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

from visalign.models.loading import ASSETS_DIR
from visalign.models.vlm_processor import VLMProcessor
from visalign.pretrain.vlm.evaluation import greedy_answers, score_answers
from visalign.worlds.shapes.questions import load_qa_split

FOLDER = ASSETS_DIR / "shapes-vlm"


def test_the_shipped_vlm_loads_with_the_stock_class_and_scores_what_its_card_says():
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    assert size <= 10 * 2**20
    model = AutoModelForImageTextToText.from_pretrained(FOLDER)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    processor = VLMProcessor.from_pretrained(FOLDER)
    final = json.loads((FOLDER / "final_eval.json").read_text())
    test = load_qa_split("test")
    scores = score_answers(test, greedy_answers(model.eval(), processor, test))
    assert scores["overall"] == final["overall"] and scores["per_type"] == final["per_type"]
    assert f"| **overall** | {final['overall']:.3f} |" in (FOLDER / "README.md").read_text()
