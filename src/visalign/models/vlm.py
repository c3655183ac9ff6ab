"""Vision-language adapter (family ``vlm``): a Qwen2-VL-class image-text-to-text model answering questions about
images, on the token-policy machinery (``token_policy.py``).

What it adds to a language model: each item's conversation is rendered with the folder's chat template and its
image through ``VLMProcessor`` (the real processor's tokens, ``vlm_processor.py``); the image's ``pixel_values`` and
``image_grid_thw`` travel with the sample (``TokenRollout.extra``); the forward pass passes ``mm_token_type_ids`` and
lets the model derive its multimodal rotary positions from the attention mask (no explicit position ids); image,
video and vision-delimiter tokens are forbidden in answers.

An item's image is ``item["image"]`` when it is an array or a PIL image, else the world renders it: a ShapesWorld
question (``worlds.shapes.questions``) carries the metadata and seed of its scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visalign.models.token_policy import TokenPipeline, TokenPolicy, text_forbidden_ids

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def vlm_forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                extra: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a Qwen2-VL-class model; its positions come from the attention mask and the image grid."""
    image_token = model.config.image_token_id
    types = (input_ids == image_token).long()
    return model(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=types, **extra).logits


class VLMPipeline(TokenPipeline):
    """A vision-language model and its processor."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor.tokenizer)
        self.processor = processor


def item_image(item: dict[str, Any]) -> np.ndarray:
    """The item's image as ``uint8 [H, W, 3]``."""
    image = item.get("image")
    if isinstance(image, np.ndarray):
        return image
    if image is not None and hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    from visalign.worlds.shapes.questions import render_question_image

    return render_question_image(item)


def _with_image(messages: list[dict[str, Any]], image: np.ndarray) -> list[dict[str, Any]]:
    """The conversation with the image object in its (first) image placeholder."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{**part, "image": image} if part.get("type") == "image" else part for part in content]
        out.append({**message, "content": content})
    return out


def vlm_forbidden_ids(tokenizer: Any) -> tuple[int, ...]:
    """A language model's forbidden answer tokens and the image, video and vision-delimiter tokens."""
    vocab = tokenizer.get_vocab()
    vision = {vocab[t] for t in VISION_TOKENS if t in vocab}
    return tuple(sorted(set(text_forbidden_ids(tokenizer)) | vision))


def encode_question(processor: Any, item: dict[str, Any]) -> tuple[list[int], dict[str, torch.Tensor]]:
    """An item's prompt token ids (chat template, generation prompt appended) and its image inputs
    (``pixel_values``, ``image_grid_thw``): what an answer is sampled, or supervised, after."""
    messages = item.get("messages") or [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": item["prompt"]}]}]
    batch = processor.process_chat([_with_image(messages, item_image(item))], add_generation_prompt=True)
    return batch["input_ids"][0].tolist(), {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}


class VLMPolicy(TokenPolicy):
    family = "vlm"
    forward = staticmethod(vlm_forward)

    def __init__(self, pipeline: VLMPipeline, device: str | torch.device = "cpu", negative_prompt: str = "",
                 **_options: Any) -> None:
        super().__init__(pipeline, device, negative_prompt)
        self.processor = pipeline.processor

    def encode_items(self, items: Sequence[dict[str, Any]]) -> tuple[list[list[int]], list[dict[str, torch.Tensor]]]:
        once: dict[int, tuple[list[int], dict[str, torch.Tensor]]] = {}  # a group repeats one item G times
        for item in items:
            if id(item) not in once:
                once[id(item)] = encode_question(self.processor, item)
        encoded = [once[id(item)] for item in items]
        return [list(tokens) for tokens, _ in encoded], [extra for _, extra in encoded]

    def forbidden_token_ids(self) -> tuple[int, ...]:
        return vlm_forbidden_ids(self.tokenizer)

    def save_merged(self, out_dir: str | Path) -> None:
        """The model (LoRA merged in) and the processor's files: a folder that ``AutoModelForImageTextToText`` and
        ``VLMProcessor.from_pretrained`` load like the base's."""
        super().save_merged(out_dir)
        self.processor.save_pretrained(out_dir)
