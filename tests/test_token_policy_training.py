"""A token policy (a tiny Qwen2 language model, family ``lm``) trains through the one ``Trainer`` loop with every
GRPO-family algorithm: the first inner step is on-policy, the LoRA weights move, the reference (adapters off) equals
the base model, the held-out evaluation scores greedy answers, and resume is bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from visalign.config import load_train_config
from visalign.errors import UserError
from visalign.models.token_policy import TokenPipeline
from visalign.pretrain.tokenizer import build_tokenizer
from visalign.rewards.base import TextReward
from visalign.trainer import Trainer

torch.set_num_threads(1)

PROMPTS = ["how many red circles", "what colour is the star", "is the square left of the cross", "two blue"]


class AnswerLength(TextReward):
    """Words in the answer, over 6: varies within every group, so every group carries signal."""

    name = "answer_length"

    def score(self, outputs, prompts, metadata):
        return {"answer_length": torch.tensor([len(o.split()) / 6 for o in outputs])}


def _pipeline() -> TokenPipeline:
    tokenizer = build_tokenizer(model_max_length=64)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    return TokenPipeline(model, tokenizer)


def _trainer(tmp_path, algorithm="grpo", extra=(), name="run", eval_enabled=False) -> Trainer:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = load_train_config(None, [
        f"run_dir={tmp_path / name}", f"data.train={prompts}", f"data.test={prompts}",
        f"eval.enabled={str(eval_enabled).lower()}", "log.progress=false", "data.prompts_per_iter=2",
        "data.group_size=4", "sampling.max_new_tokens=6", "sampling.temperature=1.0", "model.name=tiny-lm",
        "finetune.target_modules=[q_proj,v_proj]", "finetune.lora_rank=4", "train.lr=5e-3",
        "train.iterations=2", "checkpoint.every=1", f"algorithm.name={algorithm}", *extra])
    return Trainer(cfg, pipeline=("lm", _pipeline()), rewards=[(AnswerLength(), 1.0)])


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "dr_grpo", "gspo"])
def test_every_token_algorithm_trains_through_the_one_loop(tmp_path, algorithm):
    tr = _trainer(tmp_path, algorithm)
    before = {n: p.detach().clone() for n, p in tr.generator.named_trainable()}
    summary = tr.run()
    rows = _rows(tmp_path / "run")
    assert summary["finished"] and len(rows) == 2
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert max(r["first_step_log_ratio"] for r in rows) < 1e-5  # the rollout's log-probs are the policy's
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in tr.generator.named_trainable())
    assert moved > 0
    assert all(r["tokens"] > 0 for r in rows)


def test_the_lora_reference_is_the_base_model(tmp_path):
    tr = _trainer(tmp_path, extra=["train.iterations=1"])
    tr.run()
    gen = tr.generator
    ids = torch.tensor([[gen.tokenizer.bos_token_id] + gen.tokenizer("red circle", add_special_tokens=False)
                         ["input_ids"] + [5, 6]])
    base = _pipeline().model.eval()
    with torch.no_grad():
        with gen.reference():
            ref = gen.completion_log_probs(ids, torch.ones_like(ids), 3, {})
        policy = gen.completion_log_probs(ids, torch.ones_like(ids), 3, {})
        from visalign.token_rollout import completion_log_probs

        expected = completion_log_probs(base, ids, torch.ones_like(ids), 3, {})
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-6)
    assert float((policy - expected).abs().max()) > 0  # the adapters changed the policy


def test_a_token_run_resumes_bit_for_bit_and_evaluates_greedy_answers(tmp_path):
    straight = _trainer(tmp_path, name="straight", eval_enabled=True)
    straight.run()
    _trainer(tmp_path, extra=["stop_after=1"], name="cut", eval_enabled=True).run()
    resumed = _trainer(tmp_path, extra=["resume=auto"], name="cut", eval_enabled=True)
    resumed.run()
    a, b = dict(straight.generator.named_trainable()), dict(resumed.generator.named_trainable())
    assert all(torch.equal(a[n], b[n]) for n in a)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "images_per_s"))}  # noqa: E731
                          for r in rows]
    assert strip(_rows(tmp_path / "straight")) == strip(_rows(tmp_path / "cut"))
    result = json.loads((tmp_path / "straight" / "evals" / "iter_0002" / "results.json").read_text())
    answers = [json.loads(x) for x in (tmp_path / "straight" / "evals" / "iter_0002" / "answers.jsonl").open()]
    assert len(answers) == len(PROMPTS) and result["n"] == len(PROMPTS)
    # the overall score is the reward's mean over the greedy answers written beside it
    assert result["overall"] == pytest.approx(sum(len(x["answer"].split()) / 6 for x in answers) / len(PROMPTS))


def test_image_algorithms_and_image_rewards_are_refused_for_a_token_policy(tmp_path):
    with pytest.raises(UserError, match="needs likelihood"):
        _trainer(tmp_path, "dpok")
    prompts = tmp_path / "prompts.txt"
    cfg = load_train_config(None, [f"run_dir={tmp_path / 'x'}", f"data.train={prompts}", "eval.enabled=false",
                                   "algorithm.name=grpo", "finetune.target_modules=[q_proj,v_proj]"])
    from engine_fixtures import Brightness

    with pytest.raises(UserError, match="scores image outputs"):
        Trainer(cfg, pipeline=("lm", _pipeline()), rewards=[(Brightness(), 1.0)])
