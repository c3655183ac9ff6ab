"""Token-policy adapter: a transformers causal language model answering prompts (family ``lm``), the base of the
vision-language family.

It fills the ``Generator`` contract for a policy over tokens: its rollouts are sampled answers
(``output_kind = "text"``, rewards are ``TextReward``s), what they give an algorithm is ``tokens`` (per-token
log-probs of the answers), and the fine-tuning, reference, checkpoint and EMA machinery is the generators' own
(LoRA through peft with the reference = adapters off; full fine-tuning with a frozen copy). A vision-language
adapter adds image inputs through ``model_inputs`` and its own ``forward`` (multimodal positions).

Prompts: a tokenizer with a chat template gets the item's ``messages`` (or its ``prompt`` as one user turn) with the
generation prompt appended, as TRL does; one without (the tiny test models) gets ``<bos>`` and the prompt's words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visalign.models.base import Generator
from visalign.token_rollout import Forward, causal_lm_forward, completion_log_probs


def text_forbidden_ids(tokenizer: Any) -> tuple[int, ...]:
    """Tokens an answer may never contain: beginning-of-sequence and unknown (padding is added by the rollout)."""
    tok = tokenizer
    return tuple(t for t in (tok.bos_token_id, tok.unk_token_id) if t is not None and t != tok.eos_token_id)


class TokenPipeline:
    """A model and its tokenizer, shaped like a diffusers pipeline for the adapter (``components``, ``to``)."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.components = {"model": model}

    def to(self, device: Any) -> TokenPipeline:
        self.model.to(device)
        return self


class TokenPolicy(Generator):
    family = "lm"
    output_kind = "text"
    provides = frozenset({"tokens"})
    denoiser_component = "model"
    forward: Forward = staticmethod(causal_lm_forward)

    def __init__(self, pipeline: TokenPipeline, device: str | torch.device = "cpu", negative_prompt: str = "",
                 **_options: Any) -> None:
        super().__init__(pipeline, device, negative_prompt)
        self.tokenizer = pipeline.tokenizer

    @property
    def denoiser(self) -> nn.Module:
        """The trained network (the name is the contract's: for a token policy it is the language model)."""
        return self.pipeline.model

    def network(self) -> nn.Module:
        """The policy, or inside ``reference()`` under full fine-tuning the frozen copy (LoRA: adapters are off)."""
        return self._frozen_copy if (self._use_reference and self._frozen_copy is not None) else self.denoiser

    # ---- prompts and model inputs ------------------------------------------------------------------------------
    def encode_items(self, items: Sequence[dict[str, Any]]) -> tuple[list[list[int]], list[dict[str, torch.Tensor]]]:
        """Each item's prompt as token ids, ready for the answer to follow, and its further model inputs (none for
        a language model; a VLM's image)."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            out = []
            for item in items:
                messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
                ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                out.append(list(ids["input_ids"] if isinstance(ids, dict) else ids))
            return out, [{} for _ in items]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        return [bos + tok(item["prompt"], add_special_tokens=False)["input_ids"] for item in items], [{} for _ in items]

    def forbidden_token_ids(self) -> tuple[int, ...]:
        return text_forbidden_ids(self.tokenizer)

    def completion_log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
                             extra: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced log-probs ``[B, C]`` of the answer tokens under the policy (or the reference)."""
        return completion_log_probs(self.network(), input_ids, attention_mask, prompt_length, extra, temperature,
                                    type(self).forward)

    # ---- export ------------------------------------------------------------------------------------------------
    def save_lora(self, out_dir: str | Path) -> None:
        self.denoiser.save_pretrained(str(out_dir))  # transformers' PEFT integration writes the adapter only

    def save_merged(self, out_dir: str | Path) -> None:
        from visalign.models import lora as lora_utils

        model = lora_utils.merged_copy(self.denoiser) if self.finetune and self.finetune.mode == "lora" else self.denoiser
        model.save_pretrained(str(out_dir))
        self.tokenizer.save_pretrained(str(out_dir))
