"""Builders: tiny random pipelines of the real classes, deterministic, with the offline tokenizer."""

from __future__ import annotations

import time

import torch

from visalign.pretrain.build import (
    FlowSpec,
    build_diffusion_pipeline,
    build_flow_pipeline,
    count_parameters,
)
from visalign.pretrain.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, build_tokenizer, split_words


def test_tokenizer_word_level_offline():
    tok = build_tokenizer(model_max_length=10)
    ids = tok(["A Photo of 407", "zebra"], padding="max_length", max_length=10, truncation=True).input_ids
    assert ids[0][0] == BOS_ID and ids[0][7] == EOS_ID and ids[0][8:] == [PAD_ID] * 2
    assert ids[1] == [BOS_ID, UNK_ID, EOS_ID] + [PAD_ID] * 7
    assert split_words("the number 407") == ["the", "number", "4", "0", "7"]
    assert tok.batch_decode([ids[0]], skip_special_tokens=True) == ["a photo of 4 0 7"]


def test_tiny_builders_fast_small_deterministic():
    start = time.perf_counter()
    flow = build_flow_pipeline(seed=3)
    diff = build_diffusion_pipeline(seed=3)
    assert time.perf_counter() - start < 1.0
    for pipe in (flow, diff):
        total = sum(count_parameters(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
        assert 10_000 < total < 200_000
    again = build_flow_pipeline(seed=3)
    ref = flow.transformer.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in again.transformer.state_dict().items())
    assert flow.text_encoder.config.eos_token_id == EOS_ID


def test_flow_pipeline_geometry_and_sampling():
    spec = FlowSpec()
    pipe = build_flow_pipeline(spec)
    assert pipe.vae_scale_factor * pipe.transformer.config.sample_size == spec.vae.image_size
    gen = torch.Generator().manual_seed(0)
    out = pipe(
        "a red star",
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=0,
        generator=gen,
        output_type="np",
    )
    assert out.images.shape == (1, 64, 64, 3)


def test_diffusion_pipeline_sampling():
    pipe = build_diffusion_pipeline()
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    gen = torch.Generator().manual_seed(0)
    out = pipe(["a red star", ""], num_inference_steps=2, guidance_scale=3.0, generator=gen, output_type="np")
    assert out.images.shape == (2, 64, 64, 3)
