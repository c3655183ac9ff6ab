"""Tiny random Qwen-VL checkpoints in the published on-disk layouts, for the tests that load real-format folders.

Qwen2-VL / Qwen2.5-VL with a flat ``config.json`` (``rope_scaling`` of type ``mrope``, ``in_chans``), their
pre-transformers-5 tensor names (``model.layers.*``, ``visual.*``) in two bfloat16 shards with
``model.safetensors.index.json``; Qwen3-VL with nested text / vision configs; a byte-level BPE ``Qwen2Tokenizer``
(``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``), ``chat_template.json`` and
``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import AutoConfig, AutoModelForImageTextToText

from visalign.models.vlm_files import QWEN2_VL_CHAT_TEMPLATE

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
VOCAB_SIZE = 300


# -- checkpoints in the published formats ----------------------------------------------------------------


def _byte_chars() -> list[str]:
    """GPT-2 / Qwen byte-level alphabet: printable bytes as themselves, the others shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(shifted))]


def write_qwen_tokenizer(folder: Path) -> dict[str, int]:
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    core = Tokenizer(BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
    core.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "add_prefix_space": False, "additional_special_tokens": list(QWEN_SPECIALS[1:]), "bos_token": None,
        "chat_template": QWEN2_VL_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>", "padding_side": "left",
        "processor_class": "Qwen2VLProcessor", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {t: core.token_to_id(t) for t in QWEN_SPECIALS}


def hub_config(family: str, ids: dict[str, int]) -> dict:
    """``config.json`` as published (Qwen2-VL-7B / Qwen2.5-VL-7B / Qwen3-VL-2B-Instruct), at a tiny size."""
    tokens = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}  # fmt: skip
    if family == "qwen3_vl":
        text = {
            "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "dtype": "bfloat16",
            "eos_token_id": ids["<|im_end|>"], "head_dim": 16, "hidden_act": "silu", "hidden_size": 32,
            "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 4096,
            "model_type": "qwen3_vl_text", "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-6, "rope_scaling": {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"},
            "rope_theta": 5000000, "tie_word_embeddings": True, "use_cache": True, "vocab_size": VOCAB_SIZE,
        }  # fmt: skip
        vision = {
            "deepstack_visual_indexes": [0], "depth": 2, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 32,
            "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 64, "model_type": "qwen3_vl",
            "num_heads": 2, "num_position_embeddings": 64, "out_hidden_size": 32, "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2,
        }  # fmt: skip
        return {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl", **tokens,
                "text_config": text, "tie_word_embeddings": True, "transformers_version": "4.57.0.dev0",
                "vision_config": vision}  # fmt: skip
    flat = {
        "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], **tokens, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 32768, "max_window_layers": 2,
        "model_type": family, "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "vocab_size": VOCAB_SIZE,
    }  # fmt: skip
    if family == "qwen2_vl":
        flat["architectures"] = ["Qwen2VLForConditionalGeneration"]
        flat["vision_config"] = {"depth": 2, "embed_dim": 32, "mlp_ratio": 4, "num_heads": 2, "in_chans": 3,
                                 "hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2,
                                 "spatial_patch_size": 14, "temporal_patch_size": 2}  # fmt: skip
    else:
        flat["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
        flat["vision_config"] = {"depth": 2, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64,
                                 "num_heads": 2, "in_chans": 3, "out_hidden_size": 32, "patch_size": 14,
                                 "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                                 "fullatt_block_indexes": [1], "tokens_per_second": 2, "temporal_patch_size": 2}  # fmt: skip
    return flat


def hub_preprocessor(family: str) -> dict:
    if family == "qwen3_vl":
        return {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"}  # fmt: skip
    return {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor"}  # fmt: skip


def published_name(family: str, key: str) -> str:
    """Qwen2-VL / Qwen2.5-VL were published before transformers 5 moved the towers under ``model.``."""
    if family == "qwen3_vl":
        return key
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key[len("model.") :] if key.startswith("model.visual.") else key


def write_checkpoint(folder: Path, family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a random tiny checkpoint; return its state dict (transformers 5 names, bfloat16 values)."""
    folder.mkdir(parents=True)
    ids = write_qwen_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(hub_config(family, ids), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(hub_preprocessor(family), indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2))
    pad, end = ids["<|endoftext|>"], ids["<|im_end|>"]
    generation = {"bos_token_id": pad, "pad_token_id": pad, "do_sample": True, "eos_token_id": [end, pad],
                  "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001}  # fmt: skip
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    config = AutoConfig.from_pretrained(str(folder))
    torch.manual_seed(seed)
    state = {k: v.detach().to(torch.bfloat16) for k, v in AutoModelForImageTextToText.from_config(config).state_dict().items()}
    stored = {published_name(family, k): v.contiguous() for k, v in state.items()}
    if config.tie_word_embeddings:
        stored.pop("lm_head.weight", None)
    names = sorted(stored)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: stored[k] for k in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(v.numel() * v.element_size() for v in stored.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return state
