"""ImageReward (Xu et al., 2023, "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation").

BLIP (ViT-L/16 image encoder + BERT text encoder with cross-attention to the image) reads the prompt
against the image; the [CLS] feature goes through a 5-layer linear MLP; the result is standardised with
the release's constants: r = (MLP(h_cls) - 0.16717362830052426) / 1.0333394966054072.
Prompts: BERT ``bert-base-uncased`` tokenizer with BLIP's extra ``[DEC]``/``[ENC]`` tokens, padded to 35.
Images: resize 224 bicubic, center crop, OpenAI CLIP mean/std. Weights: ``ImageReward.pt`` +
``med_config.json`` (hub repo ``THUDM/ImageReward``), converted at load time (``_blip_convert``).
Differentiable (ImageReward's ReFL trains through it). The networks follow the images' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from visalign.errors import UserError
from visalign.rewards._blip_convert import build_head, build_text, build_vision, read_med_config
from visalign.rewards._images import clip_preprocess
from visalign.rewards._loading import check_tokenizer, freeze, load_state_dict, resolve_file, resolve_folder
from visalign.rewards.base import Reward, register_reward

MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_TEXT_LEN = 35


def load_blip_tokenizer(reward: str, source: str, vocab_size: int) -> Any:
    """BERT tokenizer + BLIP's ``[DEC]`` (bos) and ``[ENC]`` tokens, as BLIP's ``init_tokenizer`` builds it."""
    from transformers import BertTokenizer

    folder = resolve_folder(reward, source, patterns=["*.json", "vocab.txt"])
    if not (folder / "vocab.txt").is_file():
        raise UserError(f"reward '{reward}': tokenizer folder {folder} has no 'vocab.txt' (bert-base-uncased)")
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    check_tokenizer(reward, tokenizer, folder, vocab_size)
    return tokenizer


@register_reward("imagereward")
class ImageReward(Reward):
    """``checkpoint``: folder or hub repo with ``ImageReward.pt`` + ``med_config.json``; ``tokenizer``: BERT folder."""

    name = "imagereward"
    summary = "ImageReward: BLIP + MLP, standardised (Xu et al. 2023)"
    differentiable = True
    groupwise = False
    output_range = (float("-inf"), float("inf"))

    def __init__(
        self,
        checkpoint: str = "THUDM/ImageReward",
        tokenizer: str = "google-bert/bert-base-uncased",
        vision_heads: int | None = None,
    ) -> None:
        if Path(checkpoint).expanduser().is_file():  # the .pt file itself; med_config.json next to it
            weights = Path(checkpoint).expanduser()
            med_path = resolve_file(self.name, weights.parent, "med_config.json")
        else:
            folder = resolve_folder(self.name, checkpoint, files=["ImageReward.pt", "med_config.json"])
            weights, med_path = folder / "ImageReward.pt", folder / "med_config.json"
        med = read_med_config(self.name, med_path)
        state = load_state_dict(self.name, weights)
        self.vision = freeze(build_vision(self.name, weights, state, vision_heads))
        self.text = freeze(build_text(self.name, weights, state, med, self.vision.config.hidden_size))
        self.head = freeze(build_head(self.name, weights, state))
        self.tokenizer = load_blip_tokenizer(self.name, tokenizer, int(med["vocab_size"]))
        self.image_size = int(self.vision.config.image_size)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        if self.head.layers[0].weight.device != images.device:  # the networks follow the images
            for module in (self.vision, self.text, self.head):
                module.to(images.device)
        pixels = clip_preprocess(images, self.image_size)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_TEXT_LEN, return_tensors="pt"
        )
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=images.device)
        hidden = self.text(
            input_ids=tokens["input_ids"].to(images.device),
            attention_mask=tokens["attention_mask"].to(images.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        raw = self.head(hidden[:, 0, :].float()).squeeze(-1)
        return {self.name: (raw - MEAN) / STD}
