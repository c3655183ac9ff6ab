"""Token rollouts: the stored log-prob of every sampled token equals its teacher-forced log-prob (the first inner
step is on-policy) with and without padding, for batch sizes 1 and many; forbidden tokens are never sampled; masks
and log-probs against independent computations; seeded sampling."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from visalign.pretrain.tokenizer import build_tokenizer
from visalign.token_rollout import (
    TokenRolloutPlan,
    completion_log_probs,
    completion_mask,
    gather_log_probs,
    left_pad,
    run_token_rollout,
)

torch.set_num_threads(1)

PROMPTS = ["how many red circles", "what colour is the star", "is the square left of the cross",
           "two", "which shape is above the blue triangle and the green square"]


@pytest.fixture(scope="module")
def lm():
    tokenizer = build_tokenizer(model_max_length=64)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    return model, tokenizer


def _rollout(lm, prompts=PROMPTS, seeds=None, **plan):
    model, tokenizer = lm
    tokens = [tokenizer(p)["input_ids"] for p in prompts]
    seeds = seeds if seeds is not None else list(range(len(prompts)))
    forbidden = (tokenizer.bos_token_id, tokenizer.unk_token_id)
    return run_token_rollout(model, tokenizer, tokens, prompts, [{} for _ in prompts], torch.arange(len(prompts)),
                             seeds, TokenRolloutPlan(forbidden_token_ids=forbidden, **plan)), tokens


@pytest.mark.parametrize("batch_size", [1, 0])
def test_stored_log_probs_equal_each_sequence_scored_alone(lm, batch_size):
    model, _ = lm
    ro, tokens = _rollout(lm, max_new_tokens=8, temperature=1.0, batch_size=batch_size)
    assert ro.completion_mask.sum() > len(PROMPTS)  # answers of several tokens
    for i, prompt in enumerate(tokens):
        m = ro.completion_mask[i].bool()
        answer = ro.completion_tokens[i][m]
        ids = torch.tensor([list(prompt) + answer.tolist()])
        alone = completion_log_probs(model, ids, torch.ones_like(ids), len(prompt), {})
        diff = (alone[0] - ro.old_log_probs[i][m]).abs().max()
        assert float(diff) < 1e-5, (i, float(diff))
        assert float(ro.old_log_probs[i][~m].abs().sum()) == 0.0


def test_forbidden_tokens_are_never_sampled_and_seeds_repeat(lm):
    _, tokenizer = lm
    prompts = PROMPTS * 4
    ro, _ = _rollout(lm, prompts=prompts, max_new_tokens=12, temperature=3.0)  # a flat distribution
    sampled = ro.completion_tokens[ro.completion_mask.bool()]
    for banned in (tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        assert not bool((sampled == banned).any())
    again, _ = _rollout(lm, prompts=prompts, max_new_tokens=12, temperature=3.0)
    assert torch.equal(again.input_ids, ro.input_ids) and again.completions == ro.completions
    other, _ = _rollout(lm, prompts=prompts, seeds=[s + 100 for s in range(len(prompts))], max_new_tokens=12,
                        temperature=3.0)
    assert not torch.equal(other.input_ids, ro.input_ids)


def test_completion_mask_ends_after_the_first_eos_and_drops_padding():
    eos, pad = 2, 0
    tokens = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(completion_mask(tokens, eos, pad), expected)
    # pad == eos: the padding after the end is cut by the first eos
    assert torch.equal(completion_mask(torch.tensor([[5, 2, 2, 2]]), 2, 2), torch.tensor([[1, 1, 0, 0]]))


def test_left_pad_right_aligns():
    ids, mask = left_pad([[4, 5, 6], [7]], pad_token_id=0)
    assert ids.tolist() == [[4, 5, 6], [0, 0, 7]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_gather_log_probs_matches_a_float64_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    got = gather_log_probs(logits, tokens, temperature=0.7)
    for b in range(2):
        for t in range(3):
            row = [float(v) / 0.7 for v in logits[b, t]]
            top = max(row)
            expected = row[int(tokens[b, t])] - top - math.log(sum(math.exp(v - top) for v in row))
            assert float(got[b, t]) == pytest.approx(expected, abs=1e-6)
