"""The tiny ShapesWorld VLM and ``load_vlm``: checkpoint folders in the published layouts (``vlm_checkpoints``),
and broken ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoTokenizer

from visalign.errors import UserError
from visalign.models.vlm_build import IMAGE_SIZE, build_vlm, save_vlm
from visalign.models.vlm_files import QWEN2_VL_CHAT_TEMPLATE
from visalign.models.vlm_loading import SUPPORTED_FAMILIES, detect_family, load_vlm
from visalign.models.vlm_processor import VLMProcessor
from vlm_checkpoints import FAMILIES, write_checkpoint

QUESTIONS = ("what color is the star?", "how many circles are there?", "is the red square left of the blue circle?")


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
