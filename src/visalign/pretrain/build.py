"""Random-init diffusers pipelines of the real SD3 / SD1.5 classes, sized by the specs of ``spec.py``.

``build_flow_pipeline`` assembles a ``StableDiffusion3Pipeline`` (``SD3Transformer2DModel`` +
``FlowMatchEulerDiscreteScheduler`` + ``AutoencoderKL`` + two ``CLIPTextModelWithProjection`` + the offline
word-level tokenizer, no T5); ``build_diffusion_pipeline`` a ``StableDiffusionPipeline``
(``UNet2DConditionModel``, epsilon prediction + ``DDIMScheduler`` + ``AutoencoderKL`` + ``CLIPTextModel`` +
the tokenizer). The default specs are tiny (about 0.1M parameters, built in well under a second) for unit
tests; the shipped base models use the larger sizes of ``configs/pretrain/*.yaml``.

Sampling the flow pipeline needs ``max_sequence_length=spec.max_sequence_length`` (the number of zero T5
tokens appended to the text context; 0 for our models, 256 is diffusers' default for real SD3).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from visalign.pretrain.locality import mimetic_qk_init, set_local_position_embedding
from visalign.pretrain.spec import DiffusionSpec, FlowSpec, TextSpec, VAESpec
from visalign.pretrain.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, vocabulary

# the specs are part of this module's interface: callers build with ``build_flow_pipeline(FlowSpec(...))``
__all__ = [
    "DiffusionSpec",
    "FlowSpec",
    "TextSpec",
    "VAESpec",
    "build_diffusion_pipeline",
    "build_flow_pipeline",
    "build_vae",
    "count_parameters",
    "dit_init",
    "flow_scheduler",
    "parameter_counts",
]


def build_vae(spec: VAESpec) -> AutoencoderKL:
    """A random-init ``AutoencoderKL`` sized by ``spec``."""
    n = len(spec.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(spec.block_out_channels),
        layers_per_block=spec.layers_per_block,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.norm_num_groups,
        sample_size=spec.image_size,
        scaling_factor=spec.scaling_factor,
        shift_factor=spec.shift_factor,
        force_upcast=False,
        mid_block_add_attention=spec.mid_block_add_attention,
    )


def _text_config(spec: TextSpec, vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        projection_dim=spec.projection_dim,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_length,
        hidden_act="gelu",
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _words(spec: TextSpec) -> list[str]:
    return list(spec.words) if spec.words is not None else vocabulary()


@torch.no_grad()
def dit_init(transformer: SD3Transformer2DModel) -> None:
    """DiT's initialisation: xavier-uniform linears, zero adaLN modulations and a zero output projection.

    Every block then starts as the identity and the model predicts 0, which speeds up training from scratch
    (diffusers' constructors keep PyTorch defaults, expecting pretrained weights). Not the builders' default:
    a zero output has no gradient to LoRA adapters, which unit tests of fine-tuning need.
    """
    for module in transformer.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    proj = transformer.pos_embed.proj
    torch.nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    torch.nn.init.zeros_(proj.bias)
    for module in transformer.time_text_embed.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    for name, module in transformer.named_modules():
        if name.endswith(("norm1.linear", "norm1_context.linear", "norm_out.linear")):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    torch.nn.init.zeros_(transformer.proj_out.weight)
    torch.nn.init.zeros_(transformer.proj_out.bias)


def build_flow_pipeline(spec: FlowSpec | None = None, seed: int = 0) -> StableDiffusion3Pipeline:
    """A random-init ``StableDiffusion3Pipeline`` (no T5) sized by ``spec``; same seed, same weights."""
    spec = spec or FlowSpec()
    torch.manual_seed(seed)
    words = _words(spec.text)
    tokenizer = build_tokenizer(words, model_max_length=spec.text.max_length)
    text_config = _text_config(spec.text, len(words))
    text_encoder = CLIPTextModelWithProjection(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    vae = build_vae(spec.vae)
    inner = spec.num_heads * spec.head_dim
    transformer = SD3Transformer2DModel(
        sample_size=spec.vae.latent_size,
        patch_size=spec.patch_size,
        in_channels=spec.vae.latent_channels,
        out_channels=spec.vae.latent_channels,
        num_layers=spec.num_layers,
        attention_head_dim=spec.head_dim,
        num_attention_heads=spec.num_heads,
        joint_attention_dim=2 * spec.text.hidden_size,
        caption_projection_dim=inner,
        pooled_projection_dim=2 * spec.text.projection_dim,
        pos_embed_max_size=spec.vae.latent_size // spec.patch_size,
        qk_norm=spec.qk_norm,
    )
    if spec.init == "dit":
        dit_init(transformer)
    elif spec.init == "mimetic":
        mimetic_qk_init(transformer)
    elif spec.init != "default":
        raise ValueError(f"unknown init {spec.init!r} (default, dit, mimetic)")
    if spec.pos_embed == "local":
        set_local_position_embedding(transformer)
    elif spec.pos_embed == "learned":
        transformer.pos_embed.pos_embed = torch.nn.Parameter(transformer.pos_embed.pos_embed.detach().clone())
    elif spec.pos_embed != "sincos":
        raise ValueError(f"unknown pos_embed {spec.pos_embed!r} (sincos, local, learned)")
    scheduler = flow_scheduler(spec.prediction, spec.shift)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return _ready(pipe)


def flow_scheduler(prediction: str, shift: float) -> Any:
    """The flow pipeline's scheduler: Euler on the velocity, or (``prediction="sample"``) first-order DPM-Solver++
    on the x0 prediction over flow sigmas, which takes the same step: x' = (s'/s) x + (1 - s'/s) x0."""
    if prediction == "velocity":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    if prediction == "sample":
        return DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            use_flow_sigmas=True,
            flow_shift=shift,
            prediction_type="sample",
            algorithm_type="dpmsolver++",
            solver_order=1,
            final_sigmas_type="zero",
        )
    raise ValueError(f"unknown flow prediction {prediction!r} (velocity, sample)")


def build_diffusion_pipeline(spec: DiffusionSpec | None = None, seed: int = 0) -> StableDiffusionPipeline:
    """A random-init ``StableDiffusionPipeline`` (epsilon prediction, DDIM sampler) sized by ``spec``."""
    spec = spec or DiffusionSpec()
    if len(spec.cross_attention_levels) != len(spec.block_out_channels):
        raise ValueError("cross_attention_levels needs one flag per UNet level")
    only_cross = spec.only_cross_attention_levels
    if only_cross is not None and len(only_cross) != len(spec.block_out_channels):
        raise ValueError("only_cross_attention_levels needs one flag per UNet level")
    torch.manual_seed(seed)
    words = _words(spec.text)
    tokenizer = build_tokenizer(words, model_max_length=spec.text.max_length)
    text_encoder = CLIPTextModel(_text_config(spec.text, len(words)))
    vae = build_vae(spec.vae)
    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in spec.cross_attention_levels)
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(spec.cross_attention_levels))
    unet = UNet2DConditionModel(
        sample_size=spec.vae.latent_size,
        in_channels=spec.vae.latent_channels,
        out_channels=spec.vae.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(spec.block_out_channels),
        layers_per_block=spec.layers_per_block,
        cross_attention_dim=spec.text.hidden_size,
        attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.norm_num_groups,
        only_cross_attention=False if only_cross is None else tuple(only_cross),
        addition_embed_type=spec.addition_embed_type,
        addition_embed_type_num_heads=spec.addition_embed_type_num_heads,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=spec.beta_start,
        beta_end=spec.beta_end,
        beta_schedule=spec.beta_schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
        prediction_type=spec.prediction_type,
        rescale_betas_zero_snr=spec.rescale_betas_zero_snr,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _ready(pipe)


def _ready(pipe: Any) -> Any:
    """A built pipeline as the library samples it: no progress bars, every model in eval mode."""
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(pipe: Any) -> dict[str, int]:
    """The number of parameters of each model of a pipeline, by component name."""
    return {name: count_parameters(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
