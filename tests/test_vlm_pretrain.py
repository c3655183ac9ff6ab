"""The tiny VLM's supervised fine-tuning: resumes bit for bit, writes its run folder, and ends with a model folder
that the stock transformers class loads, with a card whose numbers are the final evaluation's."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from rich.console import Console
from transformers import Qwen2VLForConditionalGeneration

from visalign.config_io import load_config
from visalign.errors import UserError
from visalign.pretrain.vlm.config import VLMPretrainConfig
from visalign.pretrain.vlm.data import answer_loss, collate, encode_examples
from visalign.pretrain.vlm.evaluation import score_answers
from visalign.pretrain.vlm.loop import run_vlm_pretrain, step_indices
from visalign.worlds.shapes.questions import load_qa_split, write_qa_file

TINY = [
    "model.hidden_size=32", "model.layers=1", "model.heads=2", "model.kv_heads=1", "model.intermediate_size=64",
    "model.vision_dim=16", "model.vision_depth=1", "model.vision_heads=2", "model.mrope_section=[2, 3, 3]",
    "train.batch_size=4", "train.warmup=1", "log.every=1", "log.checkpoint_every=2", "log.eval_every=2",
    "log.max_new_tokens=6", "threads=1",
]  # fmt: skip


def _files(tmp_path):
    """Two train and one test question of every type (the shipped splits' first ones)."""
    train, test = load_qa_split("train"), load_qa_split("test")
    pick = {}
    for split, items, n in (("train", train, 2), ("test", test, 1)):
        chosen = [x for t in sorted({x["type"] for x in items}) for x in [y for y in items if y["type"] == t][:n]]
        pick[split] = str(write_qa_file(tmp_path / f"{split}.jsonl", chosen))
    return pick


def _config(tmp_path, name: str, steps: int, *extra: str) -> VLMPretrainConfig:
    files = _files(tmp_path)
    return load_config(VLMPretrainConfig, None, [*TINY, f"run_dir={tmp_path / name}", f"train.steps={steps}",
                                                 f"data.train={files['train']}", f"data.test={files['test']}", *extra])


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    first = [i for step in range(5) for i in step_indices(0, step, 3, 15)]  # 15 examples, batch 3: one epoch
    assert sorted(first) == list(range(15))
    assert first != list(range(15))  # shuffled
    second = [i for step in range(5, 10) for i in step_indices(0, step, 3, 15)]
    assert sorted(second) == list(range(15)) and second != first
    assert step_indices(0, 3, 4, 15) == first[12:] + second[:1]  # positions 12-15: a batch across two epochs
    assert step_indices(1, 0, 3, 15) != first[:3]


def test_the_loss_is_the_mean_cross_entropy_of_the_answer_tokens_only():
    from visalign.models.vlm_build import build_processor

    processor = build_processor()
    item = load_qa_split("train")[0]
    example = encode_examples(processor, [item])[0]
    tok = processor.tokenizer
    assert tok.decode(example.answer[:-1]) == item["answer"] and example.answer[-1] == tok.eos_token_id
    batch = collate([example, example], tok.pad_token_id)
    p, a = len(example.prompt), len(example.answer)
    assert (batch["labels"][:, :p] == -100).all() and (batch["labels"][:, p : p + a] >= 0).all()
    vocab = len(tok)
    logits = torch.randn(2, batch["input_ids"].shape[1], vocab)
    # by hand: the logit at position t predicts the token at t + 1; average over the answer tokens
    expected = -torch.stack([logits[r, t - 1].log_softmax(-1)[batch["input_ids"][r, t]]
                             for r in range(2) for t in range(p, p + a)]).mean()
    torch.testing.assert_close(answer_loss(logits, batch["labels"]), expected)
    # example averaging: a one-token answer weighs what the two-example batch's longer answer does
    short = dataclasses.replace(example, answer=example.answer[-1:])
    batch = collate([example, short], tok.pad_token_id)
    logits = torch.randn(2, batch["input_ids"].shape[1], vocab)
    nll = [[-logits[r, t - 1].log_softmax(-1)[batch["input_ids"][r, t]] for t in range(p, p + n)]
           for r, n in ((0, a), (1, 1))]
    per_example = torch.stack([torch.stack(row).mean() for row in nll]).mean()
    per_token = torch.stack([x for row in nll for x in row]).mean()
    torch.testing.assert_close(answer_loss(logits, batch["labels"], "example"), per_example)
    torch.testing.assert_close(answer_loss(logits, batch["labels"], "token"), per_token)
    assert not torch.isclose(per_example, per_token)


def test_score_answers_counts_exact_matches_and_boxes_by_iou():
    items = [x for t in ("count", "grounding") for x in [y for y in load_qa_split("test") if y["type"] == t][:2]]
    x0, y0, x1, y1 = items[2]["box"]
    answers = [items[0]["answer"], "7", f"[{x0}, {y0}, {x1}, {y1 + 1}]", "[0, 0, 1, 1]"]
    scores = score_answers(items, answers)
    assert scores["correct"] == [1.0, 0.0, 1.0, 0.0]
    assert scores["per_type"] == {"count": 0.5, "grounding": 0.5} and scores["overall"] == 0.5


def test_a_resumed_run_with_dense_loss_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    dense = ("train.dense_weight=1.0", "train.loss_average=example", "data.caption_fraction=0.5")
    quiet = Console(quiet=True)
    straight = run_vlm_pretrain(_config(tmp_path, "straight", 4, *dense), quiet)
    run_vlm_pretrain(_config(tmp_path, "resumed", 2, *dense), quiet)
    resumed = run_vlm_pretrain(_config(tmp_path, "resumed", 4, *dense), quiet)
    a = Qwen2VLForConditionalGeneration.from_pretrained(straight).state_dict()
    b = Qwen2VLForConditionalGeneration.from_pretrained(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["dense_loss"] > 0 for row in metrics)
    assert all(row["loss"] == pytest.approx(row["answer_loss"] + row["dense_loss"]) for row in metrics)
    with pytest.raises(UserError, match="dense_weight differs"):  # a run without the head cannot resume it
        run_vlm_pretrain(_config(tmp_path, "resumed", 6), quiet)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    quiet = Console(quiet=True)
    straight = run_vlm_pretrain(_config(tmp_path, "straight", 4), quiet)
    run_vlm_pretrain(_config(tmp_path, "resumed", 2), quiet)
    resumed = run_vlm_pretrain(_config(tmp_path, "resumed", 4), quiet)
    a = Qwen2VLForConditionalGeneration.from_pretrained(straight).state_dict()
    b = Qwen2VLForConditionalGeneration.from_pretrained(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = tmp_path / "resumed"
    assert [row["step"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [row["step"] for row in evals] == [2, 4] and set(evals[0]["per_type"]) == {
        "count", "color", "shape", "relation_yesno", "relation_which", "text", "grounding"}
    assert (run / "exports" / "step-000002" / "model.safetensors").is_file()
    final = json.loads((resumed / "final_eval.json").read_text())
    assert final["step"] == 4 and final["n"] == 7
    card = (resumed / "README.md").read_text()
    assert f"| **overall** | {final['overall']:.3f} |" in card and "pipeline_tag: image-text-to-text" in card
    with pytest.raises(UserError, match="beyond train.steps=2"):
        run_vlm_pretrain(_config(tmp_path, "resumed", 2), quiet)


def test_the_command_trains_a_vlm_config(tmp_path):
    from visalign.cli import main

    files = _files(tmp_path)
    config = tmp_path / "vlm.yaml"
    config.write_text(f"family: vlm\nrun_dir: {tmp_path / 'run'}\ndata: {{train: {files['train']}, "
                      f"test: {files['test']}}}\ntrain: {{steps: 1}}\n")
    assert main(["pretrain", "--config", str(config), *TINY]) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert main(["pretrain", "--config", str(config), "--from-export", "1"]) != 0
