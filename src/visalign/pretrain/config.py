"""The pretraining config: model sizes, the two stages (VAE, then denoiser), sampling, logging, export.

One file describes one shipped base model; ``visalign pretrain --config configs/pretrain/flow.yaml`` reproduces
it. Only the section of the chosen ``family`` (``flow`` or ``diffusion``) is used; the other keeps its defaults.
The ``vae``, ``text``, ``flow`` and ``diffusion`` sections extend the architectures of ``spec.py`` (where each
size is defined, bounded and given its default) with the training settings of their stage. Sizes, steps and
rates are bounded (and floats are finite, ``StrictModel``) so that a mistyped value fails when the config
loads, not after an hour of training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from visalign.config_io import StrictModel
from visalign.pretrain.spec import (
    IMAGE_SIZE,
    DiffusionArchitecture,
    DiffusionSpec,
    FlowArchitecture,
    FlowSpec,
    TextArchitecture,
    TextSpec,
    VAEArchitecture,
    VAESpec,
    architecture_of,
)


class VAEConfig(VAEArchitecture):
    """Stage 1: an ``AutoencoderKL`` trained on rendered train-split scenes (L1 + MSE + small KL)."""

    steps: int = Field(default=1500, ge=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    warmup: int = Field(default=50, ge=0)
    kl_weight: float = Field(default=1e-6, ge=0)
    # The decoder is trained on z + latent_noise * std(z) * N(0, 1) (std over the batch, all channels), so that
    # what the latent says about a shape stands above a noise floor the denoiser can reach. With 0 (and a tiny
    # KL weight) shape detail hides in latent differences of ~0.02 std that any denoiser error wipes out.
    latent_noise: float = Field(default=0.0, ge=0)
    stats_images: int = Field(default=1024, ge=1)  # images encoded to set scaling_factor / shift_factor
    init_from: str | None = None  # a pipeline folder or shipped alias whose vae/ is reused (stage skipped)
    # true: stage 1 draws its scenes with the denoiser's mixture (train.tag_weights / train.text_lengths);
    # false: from every tag and number length at even odds. Either way the scaling factors are measured on
    # the denoiser's mixture, the latents it will see.
    train_mixture: bool = True
    # scalar: one shift / scale for all channels (SD3 / SD1.5 convention). channel: per-channel standardisation
    # folded into quant_conv / post_quant_conv first (pretrain/latent_norm.py), then the scalar factors.
    latent_norm: Literal["scalar", "channel"] = "scalar"


class TextConfig(TextArchitecture):
    """The CLIP text tower(s) over the word-level tokenizer."""

    train: bool = True  # trained jointly with the denoiser; false keeps the random init frozen
    # a pipeline folder or shipped alias whose text_encoder's CLIP transformer initialises every text tower here
    # (same sizes and vocabulary; a flow tower's text_projection stays random)
    init_from: str | None = None


class FlowModelConfig(FlowArchitecture):
    """The flow transformer and how stage 2 trains it (noise levels, teacher, reflow, pixel loss)."""

    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    # SD3's logit-normal(m, s): sigma = sigmoid(m + s * n); m > 0 spends more updates at high noise
    logit_mean: float = 0.0
    logit_std: float = Field(default=1.0, gt=0)
    # < 1 scales every training sigma by this, as SD1.5's schedule ends at sigma 0.998 with 0.068 of the signal
    # while its sampler starts from pure noise: never trained on pure noise, the model is meant to read a scene
    # into the noise at the first step instead of predicting the average scene (0.93 did not help: docs/models.md)
    max_sigma: float = Field(default=1.0, gt=0, le=1)
    # a diffusion pipeline (alias or folder) on the same autoencoder whose x0 estimate replaces the data in the
    # target (denoiser distillation, pretrain/teacher.py); null: plain flow matching on the data
    teacher: str | None = None
    # reflow (pretrain/reflow.py): > 0 trains on this many (noise, teacher DDIM sample) pairs instead of rendered
    # scenes; needs ``teacher``. The teacher's sampler takes ``reflow_teacher_steps`` DDIM steps per pair.
    reflow_pairs: int = Field(default=0, ge=0)
    reflow_teacher_steps: int = Field(default=20, ge=1)
    # > 0 adds pixel_loss x MSE(decode(x0_hat), image) on the draws with sigma <= pixel_loss_max_sigma: the error
    # measured where the verifier looks, through the frozen decoder (Berrada et al. 2024, "Boosting Latent
    # Diffusion with Perceptual Objectives", use the decoder's features the same way)
    pixel_loss: float = Field(default=0.0, ge=0)
    pixel_loss_max_sigma: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _reflow_needs_teacher(self) -> FlowModelConfig:
        if self.reflow_pairs and not self.teacher:
            raise ValueError("flow.reflow_pairs needs flow.teacher (the diffusion pipeline that samples the pairs)")
        if self.pixel_loss and self.teacher:
            raise ValueError("flow.pixel_loss compares with rendered scenes; it does not combine with flow.teacher")
        return self


class DiffusionModelConfig(DiffusionArchitecture):
    """The ``UNet2DConditionModel`` and its DDPM noise schedule (``spec.py``)."""


class TrainConfig(StrictModel):
    """Stage 2: the denoiser (and the text encoders when ``text.train``)."""

    steps: int = Field(default=6000, ge=0)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    warmup: int = Field(default=200, ge=0)
    # linear decay of the learning rate to 0 over the last N steps (warmup-stable-decay)
    decay_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    # 0 disables the EMA; samples, evals and exports use the EMA weights
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    # the empty prompt, so that classifier-free guidance is available
    prompt_dropout: float = Field(default=0.1, ge=0, le=1)
    tag_balanced: bool = True  # draw a tag uniformly, then a train prompt of that tag
    tags: list[str] | None = None  # train on these tags only (None: all)
    # Relative odds of each tag when tag-balanced (a tag left out weighs 1): digits need thousands of text
    # scenes before the glyphs follow the prompt (docs/models.md, "Why `text` was 0").
    tag_weights: dict[str, float] | None = None
    # Text scenes: a uniform number length (1-3 digits), then a number of that length; without it the
    # 8 one-digit train numbers make 3% of the text scenes and the 206 three-digit ones 69%.
    text_length_balanced: bool = False
    text_lengths: list[int] | None = None  # text scenes: only numbers of these digit counts (None: all)

    @field_validator("tags")
    @classmethod
    def _known_tags(cls, tags: list[str] | None) -> list[str] | None:
        from visalign.worlds.shapes.vocab import TAGS

        if tags is not None:
            unknown = [t for t in tags if t not in TAGS]
            if unknown or not tags:
                raise ValueError(f"unknown ShapesWorld tags {unknown} (known: {', '.join(TAGS)})")
        return tags

    @field_validator("text_lengths")
    @classmethod
    def _digit_counts(cls, lengths: list[int] | None) -> list[int] | None:
        from visalign.worlds.shapes.vocab import MAX_DIGITS

        if lengths is not None and (not lengths or any(not 1 <= n <= MAX_DIGITS for n in lengths)):
            raise ValueError(f"text lengths are digit counts from 1 to {MAX_DIGITS}, got {lengths}")
        return lengths

    @field_validator("tag_weights")
    @classmethod
    def _known_weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        from visalign.worlds.shapes.vocab import TAGS

        if weights is not None:
            unknown = [t for t in weights if t not in TAGS]
            if unknown:
                raise ValueError(f"unknown ShapesWorld tags {unknown} (known: {', '.join(TAGS)})")
            bad = {t: w for t, w in weights.items() if not w > 0}
            if bad:
                raise ValueError(f"tag weights must be positive, got {bad}")
        return weights


class SampleConfig(StrictModel):
    """The sampler the model card names (also used for the periodic grids and evaluations)."""

    steps: int = Field(default=10, ge=1)
    guidance: float = Field(default=1.0, ge=0)
    batch_size: int = Field(default=64, ge=1)


class LogConfig(StrictModel):
    every: int = Field(default=50, ge=1)  # metrics line in run_dir/metrics.jsonl
    checkpoint_every: int = Field(default=250, ge=1)  # resumable checkpoint (atomic)
    sample_every: int = Field(default=1000, ge=0)  # sample grid under run_dir/samples/ (0: none)
    # test-split score in run_dir/eval.jsonl, and a pipeline folder under run_dir/exports/ (0: none)
    eval_every: int = Field(default=1000, ge=0)
    eval_images_per_prompt: int = Field(default=2, ge=1)
    grid_prompts: int = Field(default=16, ge=1)
    # the model card's evaluation (test split, seed 0); 0 skips the card
    final_images_per_prompt: int = Field(default=4, ge=0)


class ExportConfig(StrictModel):
    path: str | None = None  # also copy the final model folder here (e.g. src/visalign/assets/shapes-flow)
    half: bool = True  # store weights as float16


class PretrainConfig(StrictModel):
    family: Literal["flow", "diffusion"] = "flow"
    seed: int = 0
    run_dir: str = "runs/pretrain"
    image_size: int = Field(default=IMAGE_SIZE, ge=1)
    threads: int = Field(default=2, ge=1)
    # Processes that render (and encode) the next batches on another core while this one trains (prefetch.py);
    # 0 does it in the training process. The weights come out the same either way.
    data_workers: int = Field(default=1, ge=0)
    vae: VAEConfig = VAEConfig()
    text: TextConfig = TextConfig()
    flow: FlowModelConfig = FlowModelConfig()
    diffusion: DiffusionModelConfig = DiffusionModelConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    log: LogConfig = LogConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _image_size_fits(self) -> PretrainConfig:
        # the autoencoder halves the side once per block after the first, the transformer cuts the latent into
        # patches: any other size fails inside the first forward pass (the message starts with the key at fault)
        if self.vae.init_from is not None:  # the reused autoencoder's own config decides its factor
            return self
        factor = 2 ** (len(self.vae.block_out_channels) - 1)
        what = f"the VAE factor {factor}"
        if self.family == "flow":
            factor *= self.flow.patch_size
            what += f" x flow.patch_size {self.flow.patch_size}"
        if self.image_size % factor:
            raise ValueError(f"image_size must be a multiple of {factor} ({what}), got {self.image_size}")
        return self


def vae_spec(cfg: PretrainConfig) -> VAESpec:
    """The stage-1 autoencoder's builder spec."""
    return VAESpec(image_size=cfg.image_size, **architecture_of(cfg.vae, VAEArchitecture))


def text_spec(cfg: PretrainConfig) -> TextSpec:
    """The text towers' builder spec (the tokenizer's own vocabulary)."""
    return TextSpec(**architecture_of(cfg.text, TextArchitecture))


def model_spec(cfg: PretrainConfig) -> FlowSpec | DiffusionSpec:
    """The builder spec of the configured family."""
    if cfg.family == "flow":
        return FlowSpec(vae=vae_spec(cfg), text=text_spec(cfg), **architecture_of(cfg.flow, FlowArchitecture))
    return DiffusionSpec(
        vae=vae_spec(cfg), text=text_spec(cfg), **architecture_of(cfg.diffusion, DiffusionArchitecture)
    )
