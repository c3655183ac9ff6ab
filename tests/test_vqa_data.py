"""Visual question sets in the published layouts (Hub parquet folders, VLM-R1 / LLaVA conversations, TRL messages,
R1-V columns), their errors, the answer reward on them, and the Qwen2.5-VL recipes run on a tiny checkpoint in the
published layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from visalign.config import load_train_config
from visalign.errors import UserError
from visalign.prompts import load_prompts
from visalign.rewards import build_reward
from visalign.vqa_data import load_vqa
from vlm_checkpoints import write_checkpoint

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SIZE = 56  # the smallest Qwen2.5-VL input: 2 x 2 patches of 14 px after the 2 x 2 merge


def _png(colour: tuple[int, int, int]) -> bytes:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[:, :] = colour
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet_folder(root: Path, rows_by_split: dict[str, list[dict]]) -> Path:
    """A folder in the Hub layout, the image column a ``datasets`` Image struct (bytes + path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    for split, rows in rows_by_split.items():
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def _mcq_rows(n: int, start: int = 0) -> list[dict]:
    return [{"image": {"bytes": _png((10 * i, 0, 0)), "path": f"{i}.png"}, "question": f"Which colour? {i}",
             "choices": ["red", "green", "blue"], "answer": i % 3} for i in range(start, start + n)]


def _rec_rows(folder: Path, n: int) -> Path:
    """VLM-R1's REC layout: image paths next to a JSONL of conversations, the box inside <answer> tags."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(_png((0, 20 * i, 0)))
        lines.append({"image": f"img{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nLocate the object number {i}."},
            {"from": "gpt", "value": f"<answer>[{i}, 2, {i + 10}, 20]</answer>"}]})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_hub_parquet_folder_reads_each_split_with_choices_as_letters(tmp_path):
    folder = _parquet_folder(tmp_path / "set", {"train": _mcq_rows(4), "test": _mcq_rows(2, start=10)})
    train, test = load_vqa(folder, "train"), load_vqa(folder, "test")
    assert len(train) == 4 and len(test) == 2
    item = train[1]
    assert item["type"] == "multiple_choice" and item["answer"] == "B" and item["choices"] == ["red", "green", "blue"]
    assert item["prompt"] == "Which colour? 1\nA. red\nB. green\nC. blue"
    assert item["messages"][0]["content"][1]["text"] == item["prompt"]
    assert np.asarray(item["image"].convert("RGB"))[0, 0].tolist() == [10, 0, 0]  # decoded when used
    assert test[0]["prompt"].startswith("Which colour? 10") and "data/test-00000-of-00001.parquet row 0" in test[0][
        "source"]
    with pytest.raises(UserError, match="no files of split 'validation'.*found: test-00000-of-00001.parquet"):
        load_vqa(folder, "validation")


def test_vlm_r1_conversations_with_image_paths_are_grounding_items(tmp_path):
    path = _rec_rows(tmp_path / "rec", 2)
    items = load_prompts(str(path), question_template="{question} Answer with a box.")
    assert [i["type"] for i in items] == ["grounding", "grounding"]
    assert items[1]["box"] == [1.0, 2.0, 11.0, 20.0] and items[1]["answer"] == "[1, 2, 11, 20]"
    assert items[1]["prompt"] == "Locate the object number 1. Answer with a box."
    assert np.asarray(items[1]["image"].convert("RGB"))[0, 0].tolist() == [0, 20, 0]


def test_trl_messages_and_r1v_columns(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(_png((1, 2, 3)))
    rows = [
        {"images": ["a.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "3"}]}]},
        {"image": "a.png", "problem": "What is written?", "solution": "<answer> cat </answer>"},
        {"image": "a.png", "problem": "How many dots?", "solution": "<answer> 4 </answer>"},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_prompts(str(path))
    assert [(i["type"], i["answer"], i["prompt"]) for i in items] == [
        ("numeric", "3", "How many?"), ("open", "cat", "What is written?"), ("numeric", "4", "How many dots?")]


def test_numeric_choices_base64_images_booleans_and_null_columns(tmp_path):
    import base64

    noisy = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    noisy[0, 0] = (9, 9, 9)
    buffer = io.BytesIO()
    PIL.Image.fromarray(noisy).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert len(encoded) > 255  # longer than a file name may be: read as base64, not as a path
    rows = [
        {"image": encoded, "question": "How many?", "choices": ["1", "2", "3"], "answer": "2", "messages": None},
        {"image": encoded, "question": "How many?", "choices": ["1", "2", "3"], "answer": 2, "messages": None},
        {"image": encoded, "question": "Is it red?", "answer": True, "choices": None, "messages": None},
        {"image": [encoded], "question": "Which?", "choices": ["Red Fox", "cat"], "answer": "red  fox",
         "messages": None},
    ]
    path = tmp_path / "mixed.jsonl"  # mixed answer types: JSONL (a parquet column holds one type)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vqa(path)
    assert [i["answer"] for i in items] == ["B", "C", "yes", "A"]  # "2" is a choice's text, 2 an index
    assert np.asarray(items[0]["image"].convert("RGB"))[0, 0].tolist() == [9, 9, 9]


@pytest.mark.parametrize(("row", "message"), [
    ({"image": "a.png", "question": "Q?"}, r"set.jsonl:1: needs a question .* and an answer"),
    ({"image": "missing.png", "question": "Q?", "answer": "1"}, r"set.jsonl:1 \[image\]: image file 'missing.png'"),
    ({"image": "a.png", "question": "Q?", "answer": "[5, 2, 1, 9]"}, r"set.jsonl:1: box answer .* x0 < x1"),
    ({"image": "a.png", "question": "Q?", "choices": ["x", "y"], "answer": 2}, r"set.jsonl:1: answer index 2 is outside"),
    ({"image": "a.png", "question": "Q?", "choices": ["x", "y"], "answer": "z"}, r"set.jsonl:1: answer 'z' is neither"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "Q"}]}, r"set.jsonl:1 \[conversations\]"),
    ({"question": "Q?", "answer": "1", "images": []}, r"set.jsonl:1: needs an image"),
])  # fmt: skip
def test_bad_rows_name_the_file_line_and_key(tmp_path, row, message):
    (tmp_path / "a.png").write_bytes(_png((0, 0, 0)))
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "fine", "answer": "1"}) + "\n")
    load_vqa(path)  # the first row is fine; the bad one replaces it
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=message):
        load_vqa(path)


def test_a_template_without_the_question_is_a_config_error():
    with pytest.raises(UserError, match="question_template"):
        load_train_config(RECIPES / "grpo_qwen25vl3b_rec.yaml", ["data.question_template=Answer briefly."])


def test_the_answer_reward_scores_letters_numbers_and_boxes_by_hand(tmp_path):
    folder = _parquet_folder(tmp_path / "set", {"train": _mcq_rows(2)})
    mcq = load_vqa(folder)[1]  # answer B (green)
    rec = load_prompts(str(_rec_rows(tmp_path / "rec", 1)))[0]  # box [0, 2, 10, 20]
    numeric = {"type": "numeric", "answer": "4"}
    reward = build_reward("vqa_answer")
    outputs = ["<answer>(B)</answer>", "B. green", "the green one", "green", "A", "<answer>[0, 2, 10, 11]</answer>",
               "4.0", "four", "5", "B, because it is green", "The answer is (B).", "A because"]
    metadata = [mcq] * 5 + [rec] + [numeric] * 3 + [mcq] * 3
    scores = reward.score(outputs, [""] * len(outputs), metadata)
    iou = (10 * 9) / (10 * 18)  # the answered box covers half of the target's height
    expected = [1.0, 1.0, 0.0, 1.0, 0.0, iou, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    torch.testing.assert_close(scores["vqa_answer"], torch.tensor(expected))
    assert scores["answer_correct"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("recipe", ["grpo_qwen25vl3b_rec", "grpo_qwen25vl7b_rec_full", "grpo_qwen25vl3b_mcq",
                                    "grpo_qwen25vl7b_mcq_full"])
def test_the_qwen25vl_recipes_train_on_a_published_layout_checkpoint(tmp_path, recipe):
    from visalign.trainer import Trainer

    checkpoint = tmp_path / "Qwen2.5-VL-tiny"
    write_checkpoint(checkpoint, "qwen2_5_vl")
    if "rec" in recipe:
        data = _rec_rows(tmp_path / "rec", 4).parent
        (data / "train.jsonl").rename(data / "train-00000-of-00001.jsonl")
        (data / "test.jsonl").write_text((data / "train-00000-of-00001.jsonl").read_text())
    else:
        data = _parquet_folder(tmp_path / "mcq", {"train": _mcq_rows(4), "test": _mcq_rows(2, start=4)})
    cfg = load_train_config(RECIPES / f"{recipe}.yaml", [
        f"run_dir={tmp_path / 'run'}", f"model.name={checkpoint}", "model.dtype=float32", f"data.train={data}",
        f"data.test={data}", "train.iterations=1", "data.prompts_per_iter=2", "data.group_size=2",
        "train.minibatch_size=4", "sampling.max_new_tokens=6", "eval.max_prompts=2", "log.progress=false",
        "train.threads=1", "checkpoint.every=1"])
    summary = Trainer(cfg).run()
    assert summary["finished"] and 0.0 <= summary["final"]["overall"] <= 1.0
    kind = "grounding" if "rec" in recipe else "multiple_choice"
    assert set(summary["final"]["per_tag"]) == {kind}
    assert (tmp_path / "run" / "checkpoints").is_dir()
