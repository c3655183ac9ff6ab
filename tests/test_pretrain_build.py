"""Builders: tiny random pipelines of the real classes, deterministic, with the offline tokenizer."""

from __future__ import annotations

import time

import torch

from visalign.pretrain.build import (
    DiffusionSpec,
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


def test_unet_prompt_paths_are_stock_diffusers_options_that_the_pipeline_reloads(tmp_path):
    from diffusers import StableDiffusionPipeline

    spec = DiffusionSpec(cross_attention_levels=(True, True), only_cross_attention_levels=(True, False),
                         addition_embed_type="text", addition_embed_type_num_heads=2)  # fmt: skip
    pipe = build_diffusion_pipeline(spec)
    first = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    second = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    assert first.only_cross_attention and first.attn1.is_cross_attention  # no self-attention at full size
    assert not second.only_cross_attention and not second.attn1.is_cross_attention
    x = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 16, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        out = pipe.unet(x, 500, encoder_hidden_states=text).sample
        shifted = pipe.unet(x, 500, encoder_hidden_states=text.roll(1, dims=0)).sample
    assert not torch.allclose(out, shifted)
    pipe.save_pretrained(tmp_path)
    stock = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert stock.unet.config.addition_embed_type == "text"
    with torch.no_grad():
        assert torch.equal(stock.unet(x, 500, encoder_hidden_states=text).sample, out)


def test_learned_position_embedding_trains_and_loads_into_the_stock_class(tmp_path):
    from diffusers import SD3Transformer2DModel

    pipe = build_flow_pipeline(FlowSpec(pos_embed="learned"))
    transformer = pipe.transformer
    sincos = build_flow_pipeline(FlowSpec()).transformer.pos_embed.pos_embed
    pos = dict(transformer.named_parameters())["pos_embed.pos_embed"]
    assert torch.equal(pos.detach(), sincos)  # starts as SD3's sincos grid
    x = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 16, transformer.config.joint_attention_dim)
    pooled = torch.randn(2, transformer.config.pooled_projection_dim)
    out = transformer(
        hidden_states=x,
        encoder_hidden_states=text,
        pooled_projections=pooled,
        timestep=torch.tensor([500.0, 500.0]),
    )
    out.sample.square().mean().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0
    with torch.no_grad():
        pos.add_(torch.randn_like(pos))
    transformer.save_pretrained(tmp_path)
    stock = SD3Transformer2DModel.from_pretrained(tmp_path)  # a plain buffer there, loaded from the weights
    assert "pos_embed.pos_embed" not in dict(stock.named_parameters())
    assert torch.equal(stock.pos_embed.pos_embed, pos.detach())


def test_mimetic_init_makes_each_head_match_a_token_to_itself():
    transformer = build_flow_pipeline(FlowSpec(num_heads=3, head_dim=32, init="mimetic")).transformer
    attn = transformer.transformer_blocks[0].attn
    x = torch.randn(256, 96, generator=torch.Generator().manual_seed(0))
    for h in range(3):
        rows = slice(32 * h, 32 * (h + 1))
        product = attn.to_q.weight[rows].T @ attn.to_k.weight[rows]  # W_q^T W_k of the head, 96 x 96
        assert torch.linalg.matrix_rank(product) == 32
        logits = (x @ product) @ x.T
        # identity-dominated: a token scores itself far above other tokens (random weights give ~0 margin)
        assert logits.diag().mean() > 3 * logits.fill_diagonal_(0).abs().mean()
    assert attn.to_q.bias.abs().sum() == 0 and attn.to_k.bias.abs().sum() == 0
