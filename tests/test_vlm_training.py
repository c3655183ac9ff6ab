"""A vision-language model (a tiny random Qwen2-VL, family ``vlm``) trains on ShapesWorld questions through the
one ``Trainer`` loop: images rendered from each question's scene, answers sampled with image tokens forbidden, the
stored log-probs equal to each sequence scored alone (padding and batching do not change them), the first inner
step on-policy, resume bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from visalign.config import load_train_config
from visalign.models.vlm import VLMPipeline, VLMPolicy, encode_question, vlm_forward
from visalign.models.vlm_build import build_vlm
from visalign.prompts import load_prompts
from visalign.rewards.base import TextReward
from visalign.token_rollout import TokenRolloutPlan, completion_log_probs, run_token_rollout
from visalign.trainer import Trainer
from visalign.worlds.shapes.questions import generate_qa_splits
from visalign.worlds.shapes.questions_io import write_qa_file

torch.set_num_threads(1)


class AnswerCharacters(TextReward):
    """The answer's length in characters, over 30 (it varies within groups: signal for every group)."""

    name = "characters"

    def score(self, outputs, prompts, metadata):
        return {"characters": torch.tensor([len(o) / 30 for o in outputs])}


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    items = generate_qa_splits(0)["train"]
    by_type: dict[str, dict] = {}
    for item in items:
        by_type.setdefault(item["type"], item)
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    write_qa_file(path, list(by_type.values())[:4])
    return path


def _pipeline() -> VLMPipeline:
    model, processor = build_vlm(seed=0)
    return VLMPipeline(model, processor)


def test_vlm_rollout_log_probs_equal_each_sequence_scored_alone(qa_file):
    pipe = _pipeline()
    policy = VLMPolicy(pipe)
    items = load_prompts(str(qa_file))
    tokens, extra = policy.encode_items(items)
    plan = TokenRolloutPlan(max_new_tokens=6, temperature=1.0, forbidden_token_ids=policy.forbidden_token_ids())
    ro = run_token_rollout(pipe.model, pipe.tokenizer, tokens, [m["prompt"] for m in items], items,
                           torch.arange(len(items)), list(range(len(items))), plan, extra, vlm_forward)
    image_pad = pipe.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not bool((ro.completion_tokens[ro.completion_mask.bool()] == image_pad).any())
    assert len({len(t) for t in tokens}) > 1  # prompts of different lengths: the batch is padded
    for i, prompt in enumerate(tokens):
        m = ro.completion_mask[i].bool()
        ids = torch.tensor([list(prompt) + ro.completion_tokens[i][m].tolist()])
        alone = completion_log_probs(pipe.model, ids, torch.ones_like(ids), len(prompt), extra[i], 1.0, vlm_forward)
        assert float((alone[0] - ro.old_log_probs[i][m]).abs().max()) < 1e-5


def _trainer(tmp_path, qa_file, extra=(), name="run"):
    cfg = load_train_config(None, [
        f"run_dir={tmp_path / name}", f"data.train={qa_file}", "eval.enabled=false", "log.progress=false",
        "data.prompts_per_iter=2", "data.group_size=3", "sampling.max_new_tokens=5", "model.name=tiny-vlm",
        "finetune.target_modules=[q_proj,v_proj]", "finetune.lora_rank=4", "train.lr=5e-3", "train.iterations=2",
        "checkpoint.every=1", "algorithm.name=grpo", *extra])
    return Trainer(cfg, pipeline=("vlm", _pipeline()), rewards=[(AnswerCharacters(), 1.0)])


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_vlm_trains_on_questions_and_resumes_bit_for_bit(tmp_path, qa_file):
    straight = _trainer(tmp_path, qa_file, name="straight")
    before = {n: p.detach().clone() for n, p in straight.generator.named_trainable()}
    straight.run()
    rows = _rows(tmp_path / "straight")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert max(r["first_step_log_ratio"] for r in rows) < 1e-5
    assert max(float((p.detach() - before[n]).abs().max()) for n, p in straight.generator.named_trainable()) > 0
    _trainer(tmp_path, qa_file, ["stop_after=1"], name="cut").run()
    resumed = _trainer(tmp_path, qa_file, ["resume=auto"], name="cut")
    resumed.run()
    a, b = dict(straight.generator.named_trainable()), dict(resumed.generator.named_trainable())
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_vlm_checkpoint_folder_trains_through_the_users_path(tmp_path, qa_file):
    """A tiny Qwen2-VL written in the real checkpoint layout is found by ``model.name`` alone (as a hub download or
    a local folder is), loaded by the same code as a real one, and trained."""
    from visalign.models.vlm_build import save_vlm

    folder = save_vlm(*build_vlm(seed=0), tmp_path / "tiny-qwen2-vl")
    cfg = load_train_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.train={qa_file}", "eval.enabled=false", "log.progress=false",
        "data.prompts_per_iter=2", "data.group_size=3", "sampling.max_new_tokens=4", f"model.name={folder}",
        "finetune.target_modules=[q_proj,v_proj]", "train.iterations=1", "algorithm.name=dapo"])
    tr = Trainer(cfg, rewards=[(AnswerCharacters(), 1.0)])
    assert tr.family == "vlm" and isinstance(tr.generator, VLMPolicy)
    assert tr.run()["finished"]


def _lora_run(tmp_path, qa_file) -> tuple[Trainer, Path]:
    """A one-iteration LoRA GRPO run on a tiny Qwen2-VL folder (lr high enough that the adapter moves)."""
    from visalign.models.vlm_build import save_vlm

    folder = save_vlm(*build_vlm(seed=0), tmp_path / "tiny-qwen2-vl")
    cfg_args = [f"run_dir={tmp_path / 'run'}", f"data.train={qa_file}", "eval.enabled=false", "log.progress=false",
                "data.prompts_per_iter=2", "data.group_size=3", "sampling.max_new_tokens=4", f"model.name={folder}",
                "finetune.target_modules=[q_proj,v_proj]", "train.iterations=1", "train.lr=1e-2",
                "algorithm.name=grpo"]
    tr = Trainer(load_train_config(None, cfg_args), rewards=[(AnswerCharacters(), 1.0)])
    tr.run()
    return tr, folder


def _same_log_probs_as_the_trained_policy(tr: Trainer, model, qa_file) -> None:
    """``model`` scores an answer to the first question as the trained policy does, and not as the base."""
    items = load_prompts(str(qa_file))[:1]
    tokens, extra = tr.generator.encode_items(items)
    ids = torch.tensor([tokens[0] + [5, 6, 7]])
    with torch.no_grad():
        trained = tr.generator.completion_log_probs(ids, torch.ones_like(ids), len(tokens[0]), extra[0])
        loaded = completion_log_probs(model, ids, torch.ones_like(ids), len(tokens[0]), extra[0], 1.0, vlm_forward)
        with tr.generator.reference():
            base = tr.generator.completion_log_probs(ids, torch.ones_like(ids), len(tokens[0]), extra[0])
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)
    assert float((trained - base).abs().max()) > 1e-6  # the adapter is not a no-op


def test_a_vlm_run_exports_a_lora_adapter_that_the_stock_class_loads(tmp_path, qa_file):
    """``visalign export`` of a VLM run writes a PEFT adapter; the stock class plus ``load_adapter`` reproduces the
    trained policy's log-probs."""
    from transformers import AutoModelForImageTextToText

    from visalign.export import export_run

    tr, folder = _lora_run(tmp_path, qa_file)
    out = export_run(tmp_path / "run", tmp_path / "adapter")
    stock = AutoModelForImageTextToText.from_pretrained(folder)
    stock.load_adapter(str(out))
    _same_log_probs_as_the_trained_policy(tr, stock.eval(), qa_file)


def test_a_merged_vlm_export_loads_with_the_stock_class_and_processor(tmp_path, qa_file):
    """``visalign export --merged`` of a LoRA VLM run: a Qwen2-VL folder (weights with the adapter merged in,
    tokenizer, preprocessor config, chat template) whose stock model gives the trained policy's log-probs."""
    from transformers import AutoModelForImageTextToText

    from visalign.export import export_run
    from visalign.models.vlm_processor import VLMProcessor

    tr, _folder = _lora_run(tmp_path, qa_file)
    out = export_run(tmp_path / "run", tmp_path / "merged", merged=True)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "chat_template.jinja"} <= {
        p.name for p in out.iterdir()}
    item = load_prompts(str(qa_file))[0]
    assert encode_question(VLMProcessor.from_pretrained(out), item)[0] == tr.generator.encode_items([item])[0][0]
    _same_log_probs_as_the_trained_policy(tr, AutoModelForImageTextToText.from_pretrained(out).eval(), qa_file)
