"""Build the tiny ShapesWorld VLM: a randomly initialised ``Qwen2VLForConditionalGeneration`` of 1.7 M parameters.

The class is transformers' own Qwen2-VL, the simplest of the family: its vision tower is a plain ViT
(LayerNorm, full attention in every block, a GELU MLP) followed by the 2x2 patch merger, where Qwen2.5-VL adds
window attention with a ``window_size`` in pixels and a list of full-attention blocks, and Qwen3-VL adds
learned position embeddings and deepstack feature injection. Everything a full-size Qwen2-VL does on the
text side (multimodal rotary positions over ``(t, h, w)``, the ``<|image_pad|>`` placeholders, generation
with a cache) is exercised at a size that trains on a CPU.

Images are 64 x 64 px: patch 8, merge 2, so one image is an 8 x 8 grid of patches, 16 merged tokens.
``min_pixels`` / ``max_pixels`` (32^2 / 128^2) keep 64 px images at their size and scale others into that
range. The tokenizer is the word-level one of ``vlm_tokenizer.py`` and the chat template Qwen2-VL-Instruct's.

``save_vlm`` writes the layout of a published Qwen2-VL checkpoint: ``config.json`` (``model_type``
``qwen2_vl``), ``model.safetensors``, ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja`` and ``preprocessor_config.json``; ``AutoModelForImageTextToText.from_pretrained``,
``AutoTokenizer`` and ``VLMProcessor.from_pretrained`` read it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from visalign.models.vlm_files import QWEN2_VL_CHAT_TEMPLATE
from visalign.models.vlm_image import ImageSettings
from visalign.models.vlm_processor import VLMProcessor
from visalign.models.vlm_tokenizer import (
    IM_END,
    IMAGE_PAD,
    PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_vlm_tokenizer,
)

IMAGE_SIZE = 64


@dataclass(frozen=True)
class TinyVLMSpec:
    """The sizes of the tiny VLM (defaults: 1.7 M parameters with the default vocabulary)."""

    hidden_size: int = 128
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 512
    vision_dim: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    patch_size: int = 8
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 32 * 32
    max_pixels: int = 128 * 128
    max_position_embeddings: int = 2048
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2 (Qwen2-VL: 16, 24, 24 of 64)
    # the text rotary base: M-RoPE gives the width position the lowest frequencies, 10000^(-20/32 .. -30/32) at
    # 10,000, so across a 4 x 4 token grid the language model barely sees where a token is (pretrain/vlm docs)
    rope_theta: float = 10000.0

    def image_settings(self) -> ImageSettings:
        """Qwen2-VL's image processing (CLIP mean / std, bicubic) at this patch size."""
        return ImageSettings(
            patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size,
            merge_size=self.merge_size,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )


def build_processor(spec: TinyVLMSpec = TinyVLMSpec(), extra_words: Iterable[str] = ()) -> VLMProcessor:
    """The word-level tokenizer, the spec's image settings and the Qwen2-VL chat template."""
    return VLMProcessor(build_vlm_tokenizer(extra_words), spec.image_settings(), QWEN2_VL_CHAT_TEMPLATE)


def tiny_config(processor: VLMProcessor, spec: TinyVLMSpec = TinyVLMSpec()) -> Qwen2VLConfig:
    """A ``Qwen2VLConfig`` sized by ``spec`` whose token ids are the tokenizer's."""
    tok = processor.tokenizer
    head_dim = spec.hidden_size // spec.heads
    if sum(spec.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
    ids = {t: tok.convert_tokens_to_ids(t) for t in (PAD, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
    text_config = {
        "vocab_size": len(tok),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.layers,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "mrope_section": list(spec.mrope_section), "rope_theta": spec.rope_theta},
        "bos_token_id": ids[PAD],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[PAD],
    }
    vision_config = {
        "depth": spec.vision_depth,
        "embed_dim": spec.vision_dim,
        "hidden_size": spec.hidden_size,  # the merger's output width: the language model's
        "mlp_ratio": 4,
        "num_heads": spec.vision_heads,
        "in_channels": 3,
        "patch_size": spec.patch_size,
        "spatial_merge_size": spec.merge_size,
        "temporal_patch_size": spec.temporal_patch_size,
    }
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,
    )


def generation_config(processor: VLMProcessor) -> GenerationConfig:
    """Qwen2-VL-Instruct's stopping tokens (``<|im_end|>``, ``<|endoftext|>``), greedy by default."""
    tok = processor.tokenizer
    pad, im_end = tok.convert_tokens_to_ids(PAD), tok.convert_tokens_to_ids(IM_END)
    return GenerationConfig(bos_token_id=pad, pad_token_id=pad, eos_token_id=[im_end, pad], do_sample=False)


def build_vlm(
    spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0, extra_words: Iterable[str] = ()
) -> tuple[Qwen2VLForConditionalGeneration, VLMProcessor]:
    """A randomly initialised tiny Qwen2-VL (float32, eval mode; same ``seed``, same weights) and its processor."""
    processor = build_processor(spec, extra_words)
    config = tiny_config(processor, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = generation_config(processor)
    return model.eval(), processor


def save_vlm(model: Qwen2VLForConditionalGeneration, processor: VLMProcessor, folder: str | Path) -> Path:
    """Write model, tokenizer and processor files into ``folder`` in the Qwen2-VL checkpoint layout."""
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Writing model shards" bar would interleave with the caller's
    try:
        model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    processor.save_pretrained(folder)
    return folder
