"""The tiny ShapesWorld VLM and ``load_vlm``: checkpoint folders in the published layouts, and broken ones.

The family checkpoints are written the way the published ones are: Qwen2-VL / Qwen2.5-VL with a flat
``config.json`` (``rope_scaling`` of type ``mrope``, ``in_chans``), their pre-transformers-5 tensor names
(``model.layers.*``, ``visual.*``) in two bfloat16 shards with ``model.safetensors.index.json``; Qwen3-VL with
nested text / vision configs; a byte-level BPE ``Qwen2Tokenizer`` (``tokenizer.json``, ``vocab.json``,
``merges.txt``, ``tokenizer_config.json``), ``chat_template.json`` and ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from visalign.errors import UserError
from visalign.models.vlm_build import IMAGE_SIZE, build_vlm, save_vlm
from visalign.models.vlm_files import QWEN2_VL_CHAT_TEMPLATE
from visalign.models.vlm_loading import SUPPORTED_FAMILIES, detect_family, load_vlm
from visalign.models.vlm_processor import VLMProcessor

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
VOCAB_SIZE = 300
QUESTIONS = ("what color is the star?", "how many circles are there?", "is the red square left of the blue circle?")


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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("vlm_checkpoints")
    return {family: (root / family, write_checkpoint(root / family, family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = build_vlm()
    return model, processor, save_vlm(model, processor, tmp_path_factory.mktemp("tiny") / "vlm")


def _conversations(n: int = 3) -> list:
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(n)]
    return [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}]
            for im, q in zip(images, QUESTIONS, strict=False)]  # fmt: skip


def _varied(model) -> None:
    """Spread the weights so that greedy replies differ from prompt to prompt (a fresh init answers one token)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


# -- the tiny VLM ----------------------------------------------------------------------------------------


def test_tiny_vlm_folder_has_the_qwen2vl_layout_and_loads_with_stock_classes(tiny):
    model, processor, folder = tiny
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 4_000_000
    again, _ = build_vlm()  # the same seed builds the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert sorted(p.name for p in folder.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert (folder / "chat_template.jinja").read_text() == QWEN2_VL_CHAT_TEMPLATE
    stock = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(stock) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stock.state_dict().values(), strict=True))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("<answer> red </answer>")["input_ids"] == processor.tokenizer("<answer> red </answer>")["input_ids"]
    loaded = VLMProcessor.from_pretrained(folder)
    assert loaded.image_settings == processor.image_settings and loaded.image_token_id == model.config.image_token_id
    assert loaded.num_image_tokens(IMAGE_SIZE, IMAGE_SIZE) == 16


def test_tiny_vlm_forward_and_generate_are_deterministic_and_batch_invariant(tiny):
    _, _, folder = tiny
    model, processor = load_vlm(folder)
    _varied(model)
    conversations = _conversations()
    batch = processor.process_chat(conversations, padding_side="left")
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 3  # some rows are padded
    with torch.no_grad():
        logits = model(**batch).logits
        assert torch.equal(logits, model(**batch).logits)
        assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
        assert torch.equal(out, model.generate(**batch, max_new_tokens=8, do_sample=False))
        replies = out[:, batch["input_ids"].shape[1] :]
        for i, conversation in enumerate(conversations):
            alone = processor.process_chat(conversation)
            single = model.generate(**alone, max_new_tokens=8, do_sample=False)[:, alone["input_ids"].shape[1] :]
            assert replies[i].tolist() == single[0].tolist()
    assert len({tuple(r) for r in replies.tolist()}) > 1
    assert all(isinstance(text, str) for text in processor.batch_decode(replies))


def test_tiny_tokenizer_keeps_reasoning_tags_and_splits_digits(tiny):
    _, processor, _ = tiny
    tok = processor.tokenizer
    ids = tok("<think>The star is red</think><answer>407</answer>")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<think>", "the", "star", "is", "red", "</think>", "<answer>", "4", "0",
                                              "7", "</answer>"]  # fmt: skip
    assert processor.decode(ids) == "<think> the star is red </think> <answer> 4 0 7 </answer>"
    assert tok.unk_token_id not in tok("what colour are the crosses below the pink triangles?")["input_ids"]


# -- load_vlm over the published formats -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_published_layouts_load_with_their_weights(checkpoints, family):
    folder, state = checkpoints[family]
    assert detect_family(folder) == family
    model, processor = load_vlm(folder)
    assert model.dtype == torch.float32 and not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items())
    batch = processor.process_chat(_conversations(2), padding_side="left")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
        model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert load_vlm(folder, dtype="auto")[0].dtype == torch.bfloat16
    assert load_vlm(folder, dtype=torch.float16)[0].dtype == torch.float16


def test_supported_families():
    assert set(SUPPORTED_FAMILIES) == set(FAMILIES)


# -- broken folders --------------------------------------------------------------------------------------


def _edit_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _drop_first_tensor(folder: Path) -> None:
    shard = folder / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    name = sorted(tensors)[0]
    del tensors[name]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"][name]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _reshape_first_tensor(folder: Path) -> None:
    shard = folder / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    tensors[sorted(tensors)[0]] = torch.zeros(3, 3, dtype=torch.bfloat16)
    save_file(tensors, str(shard), metadata={"format": "pt"})


def _only_bin(folder: Path) -> None:
    for file in folder.glob("model*"):
        file.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")


BREAKS = {
    "missing config": (lambda f: (f / "config.json").unlink(), "missing config.json"),
    "malformed config": (lambda f: (f / "config.json").write_text("{"), r"config.json: malformed JSON"),
    "unsupported family": (lambda f: _edit_json(f / "config.json", model_type="llava"), r"\[model_type\]: 'llava' is not"),
    "invalid config field": (lambda f: _edit_json(f / "config.json", hidden_size="wide"), r"config.json: invalid config"),
    "no weights": (lambda f: [p.unlink() for p in f.glob("model*")], "missing model.safetensors"),
    "pickle weights only": (_only_bin, "only safetensors weights are loaded"),
    "missing shard": (lambda f: (f / "model-00002-of-00002.safetensors").unlink(),
                      r"model-00002-of-00002.safetensors: missing weights shard \(listed in model.safetensors.index.json\)"),
    "corrupt shard": (lambda f: (f / "model-00001-of-00002.safetensors").write_bytes(b"\x07garbage"),
                      r"model-00001-of-00002.safetensors: not a readable safetensors file"),
    "malformed index": (lambda f: (f / "model.safetensors.index.json").write_text("[1]"),
                        r"model.safetensors.index.json: expected a JSON object"),
    "missing tensor": (_drop_first_tensor, r"index.json: has no tensor for 1 model parameter\(s\)"),
    "wrong tensor shape": (_reshape_first_tensor, r"index.json: has tensors of the wrong shape for 1 model parameter\(s\): model\."),
    "missing tokenizer": (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "vocab.json")], "missing tokenizer.json"),
    "malformed tokenizer": (lambda f: (f / "tokenizer.json").write_text("{"), r"tokenizer.json: malformed JSON"),
    "broken tokenizer": (lambda f: (f / "tokenizer.json").write_text('{"model": 3}'),
                         r"tokenizer.json: could not load the tokenizer"),
    "missing tokenizer config": (lambda f: (f / "tokenizer_config.json").unlink(), "missing tokenizer_config.json"),
    "remote-code tokenizer": (lambda f: _edit_json(f / "tokenizer_config.json", auto_map={"AutoTokenizer": ["x.Tok", None]}),
                              r"tokenizer_config.json \[auto_map\]"),
    "missing preprocessor config": (lambda f: (f / "preprocessor_config.json").unlink(),
                                    "missing preprocessor_config.json"),
    "malformed preprocessor config": (lambda f: (f / "preprocessor_config.json").write_text("{,"),
                                      r"preprocessor_config.json: malformed JSON"),
    "bad preprocessor value": (lambda f: _edit_json(f / "preprocessor_config.json", merge_size=0),
                               r"preprocessor_config.json: \[merge_size\] must be a positive integer"),
    "patch size disagrees": (lambda f: _edit_json(f / "preprocessor_config.json", patch_size=16),
                             r"preprocessor_config.json \[patch_size\]: 16 but .*vision_config.patch_size\] is 14"),
    "image token disagrees": (lambda f: _edit_json(f / "config.json", image_token_id=5),
                              r"config.json \[image_token_id\]: 5 but .*tokenizer.json gives <\|image_pad\|> the id"),
    "vocabulary too small": (lambda f: _edit_json(f / "config.json", vocab_size=100), r"tokenizer.json: \d+ tokens, more than"),
    "malformed chat template": (lambda f: (f / "chat_template.json").write_text('{"chat_template": 1}'),
                                r"chat_template.json \[chat_template\]"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_folder_is_a_user_error_naming_the_file(checkpoints, tmp_path, name):
    source, _ = checkpoints["qwen2_vl"]
    folder = tmp_path / "ckpt"
    shutil.copytree(source, folder)
    breaker, message = BREAKS[name]
    breaker(folder)
    with pytest.raises(UserError, match=message):
        load_vlm(folder)


def test_bad_folder_and_dtype_arguments(checkpoints, tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_vlm(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="must be a folder"):
        load_vlm(tmp_path / "file")
    with pytest.raises(UserError, match="dtype 'float8' is not supported"):
        load_vlm(checkpoints["qwen2_vl"][0], dtype="float8")
