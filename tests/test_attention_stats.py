"""experiments/attention_stats.py: the per-layer attention statistics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark_scripts import load_experiment
from visalign.pretrain.build import FlowSpec, build_flow_pipeline

stats_script = load_experiment("attention_stats")


def test_uniform_attention_statistics_by_hand():
    n_image, n_text = 64, 16
    zeros = torch.zeros(1, 2, n_image + n_text, 8)  # every logit 0: uniform over the 80 keys
    s = stats_script.layer_stats(zeros, zeros, n_image)
    # 3 x 3 neighbourhoods on an 8 x 8 grid: (8 + 2 * 7)^2 = 484 (query, key) pairs over 64 queries
    assert s["near"] == pytest.approx(484 / 64 / 80)
    assert s["H"] == pytest.approx(math.log(80))
    assert s["text"] == pytest.approx(16 / 80)
    assert s["max"] == 0


def test_self_attention_is_local_and_certain():
    n = 64 + 4
    one_hot = torch.eye(n).view(1, 1, n, n) * 30.0  # q_i . k_j / sqrt(n) large only for i == j
    s = stats_script.layer_stats(one_hot, one_hot, 64)
    assert s["near"] == pytest.approx(1.0, abs=1e-6)
    assert s["H"] == pytest.approx(0.0, abs=1e-4)
    assert s["text"] == pytest.approx(0.0, abs=1e-6)


def test_model_stats_on_a_saved_folder(tmp_path):
    pipe = build_flow_pipeline(FlowSpec(num_layers=2, num_heads=3, head_dim=32))  # the shipped width, 96
    pipe.save_pretrained(tmp_path)
    out = stats_script.model_stats(str(tmp_path), sigmas=[0.5, 0.9], scenes=2)
    assert set(out["sigmas"]) == {0.5, 0.9}
    assert all(len(layers) == 2 for layers in out["sigmas"].values())  # one record per joint-attention layer
    # SD3's sincos grid on 8 x 8 tokens: neighbours nearly indistinguishable
    assert out["position"]["adjacent"] > 0.95
    # the original attention function is restored
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"


def test_local_position_embedding_is_a_gaussian_kernel():
    pipe = build_flow_pipeline(FlowSpec(num_heads=3, head_dim=32, pos_embed="local"))
    sim = stats_script.position_similarity(pipe.transformer)
    assert sim["adjacent"] == pytest.approx(math.exp(-0.5), abs=1e-5)  # one token apart, length scale 1
    assert sim["corner"] == pytest.approx(math.exp(-(7**2 + 7**2) / 2), abs=1e-5)
    rows = pipe.transformer.pos_embed.pos_embed[0]
    assert rows.square().sum(-1).mean() == pytest.approx(96 / 2, rel=1e-4)  # sincos rows' squared norm
