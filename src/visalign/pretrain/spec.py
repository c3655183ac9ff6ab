"""The architecture of the pretrained pipelines: every size and option of each component, defined once.

Each component has one architecture model (``VAEArchitecture``, ``TextArchitecture``, ``FlowArchitecture``,
``DiffusionArchitecture``) holding its fields, their bounds and their one default. Two kinds of class extend it:

* the builder specs (``VAESpec``, ``TextSpec``, ``FlowSpec``, ``DiffusionSpec``), which add what only a build
  needs (the image size, the vocabulary, the parts of a pipeline) and are what ``build.py`` builds from;
* the config sections of ``config.py`` (``vae:``, ``text:``, ``flow:``, ``diffusion:``), which add each stage's
  training settings; ``model_spec(cfg)`` turns a config into the spec of its family.

The defaults are the tiny sizes (about 0.1M parameters, built in well under a second) that unit tests build
with ``build_flow_pipeline()``; the recipes in ``configs/pretrain/*.yaml`` name every size of the shipped models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from visalign.config_io import StrictModel

IMAGE_SIZE = 64  # ShapesWorld renders 64 x 64 scenes


class VAEArchitecture(StrictModel):
    """``AutoencoderKL``: ``len(block_out_channels) - 1`` halvings from the image to the latent grid."""

    block_out_channels: list[int] = Field(default=[8, 8, 8], min_length=1)
    layers_per_block: int = Field(default=1, ge=1)
    latent_channels: int = Field(default=4, ge=1)
    norm_num_groups: int = Field(default=4, ge=1)
    mid_block_add_attention: bool = False


class TextArchitecture(StrictModel):
    """A CLIP text tower over the word-level tokenizer (``max_length`` tokens, ``<bos>``/``<eos>`` included)."""

    hidden_size: int = Field(default=16, ge=1)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=2, ge=1)
    intermediate_size: int = Field(default=32, ge=1)
    projection_dim: int = Field(default=16, ge=1)
    max_length: int = Field(default=16, ge=1)


class FlowArchitecture(StrictModel):
    """The ``SD3Transformer2DModel`` (inner width = num_heads * head_dim) and its flow-matching schedule."""

    patch_size: int = Field(default=2, ge=1)
    num_layers: int = Field(default=1, ge=1)
    num_heads: int = Field(default=2, ge=1)
    head_dim: int = Field(default=8, ge=1)
    shift: float = Field(default=1.0, gt=0)
    init: Literal["default", "dit", "mimetic"] = "default"  # dit: zero adaLN / output; mimetic: pretrain/locality.py
    qk_norm: Literal["rms_norm"] | None = None  # SD3.5's RMS norm on queries and keys ("none" in a YAML file)
    # velocity: the transformer predicts v = eps - x0 (SD3; FlowMatchEulerDiscreteScheduler). sample: it predicts
    # x0 and the folder's scheduler is DPMSolverMultistepScheduler(use_flow_sigmas, prediction_type="sample",
    # first order), whose steps are the same Euler steps on the same straight path.
    prediction: Literal["velocity", "sample"] = "velocity"
    # learned: the position embedding (SD3's persistent sincos buffer) is trained with the transformer
    # local: rows whose Gram matrix is a Gaussian kernel over the token grid (pretrain/locality.py)
    pos_embed: Literal["sincos", "local", "learned"] = "sincos"

    @field_validator("qk_norm", mode="before")
    @classmethod
    def _none_is_no_norm(cls, value: Any) -> Any:
        return None if value == "none" else value


class DiffusionArchitecture(StrictModel):
    """The ``UNet2DConditionModel`` and its DDPM noise schedule."""

    block_out_channels: list[int] = Field(default=[8, 16], min_length=1)
    layers_per_block: int = Field(default=1, ge=1)
    attention_head_dim: int = Field(default=4, ge=1)
    norm_num_groups: int = Field(default=4, ge=1)
    cross_attention_levels: list[bool] = [True, False]
    # Per level: attend to the prompt only, without self-attention over the image (diffusers'
    # ``only_cross_attention``); cheap enough for the 16x16 level, where self-attention is not.
    only_cross_attention_levels: list[bool] | None = None
    # "text": an attention-pooled prompt embedding is added to the timestep embedding, so every ResNet block
    # sees the whole prompt (diffusers' ``addition_embed_type``, as in UnCLIP / Kandinsky's text path).
    addition_embed_type: Literal["text"] | None = None
    addition_embed_type_num_heads: int = Field(default=4, ge=1)
    beta_schedule: str = "scaled_linear"
    beta_start: float = Field(default=0.00085, gt=0, lt=1)
    beta_end: float = Field(default=0.012, gt=0, lt=1)
    # epsilon: SD1.5's target. v_prediction + rescale_betas_zero_snr (Lin et al. 2023): the training schedule
    # ends at pure noise, where sampling starts; with SD1.5's schedule the last step still holds 6.8% signal.
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"  # sample: the UNet predicts x0
    rescale_betas_zero_snr: bool = False


class VAESpec(VAEArchitecture):
    """An autoencoder to build: its architecture, the image size and the initial latent factors."""

    image_size: int = Field(default=IMAGE_SIZE, ge=1)
    scaling_factor: float = 1.0
    shift_factor: float = 0.0  # SD3 pipelines need a number; SD1.5 pipelines ignore it

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample


class TextSpec(TextArchitecture):
    """A text tower to build: its architecture and the tokenizer's vocabulary."""

    words: tuple[str, ...] | None = None  # the full vocabulary; None: tokenizer.vocabulary()


class FlowSpec(FlowArchitecture):
    """An SD3-class flow-matching pipeline."""

    vae: VAESpec = Field(default_factory=VAESpec)
    text: TextSpec = Field(default_factory=TextSpec)
    # the number of zero T5 tokens a sampler appends to the text context: these pipelines have no T5
    max_sequence_length: int = 0


class DiffusionSpec(DiffusionArchitecture):
    """An SD1.5-class pipeline (epsilon, v or x0 prediction)."""

    vae: VAESpec = Field(default_factory=VAESpec)
    text: TextSpec = Field(default_factory=TextSpec)


def architecture_of(section: StrictModel, architecture: type[StrictModel]) -> dict[str, Any]:
    """The fields of ``section`` (a config section or a spec) that ``architecture`` defines."""
    return {name: getattr(section, name) for name in architecture.model_fields}


def spec_to_dict(spec: FlowSpec | DiffusionSpec) -> dict[str, Any]:
    """A JSON-friendly copy of a spec, laid out as the model folders' ``visalign.json`` records it.

    The layout is the one the shipped folders have: the parts first (the autoencoder led by the image size),
    then the denoiser's fields, the flow's ``max_sequence_length`` after ``shift``.
    """
    vae = spec.vae.model_dump(mode="json")
    record: dict[str, Any] = {
        "vae": {"image_size": vae.pop("image_size"), **vae},
        "text": spec.text.model_dump(mode="json"),
    }
    for name, value in spec.model_dump(mode="json", exclude={"vae", "text", "max_sequence_length"}).items():
        record[name] = value
        if name == "shift" and isinstance(spec, FlowSpec):
            record["max_sequence_length"] = spec.max_sequence_length
    return record
