"""VLMProcessor against transformers' own Qwen2-VL processing, bit for bit.

The references are the real classes, which import without torchvision: ``Qwen2VLImageProcessorPil`` (what
``AutoImageProcessor`` gives for a Qwen-VL folder here) and ``Qwen2VLProcessor`` with its video processor
left out (the one piece that needs torchvision; images never reach it). Token counts are also checked
against numbers worked out by hand from the ``smart_resize`` rule.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin, Qwen2VLProcessor
from transformers.models.auto import video_processing_auto
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from visalign.errors import UserError
from visalign.models.vlm_files import QWEN2_VL_CHAT_TEMPLATE
from visalign.models.vlm_image import ImageSettings, process_images, smart_resize
from visalign.models.vlm_processor import VLMProcessor
from visalign.models.vlm_tokenizer import build_vlm_tokenizer

TINY = {"patch_size": 8, "merge_size": 2, "min_pixels": 32 * 32, "max_pixels": 128 * 128}
QWEN3 = {"patch_size": 16, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
         "size": {"shortest_edge": 65536, "longest_edge": 16777216}}  # fmt: skip
QUESTIONS = ("What color is the star?", "How many circles are there?", "Is the red square left of the blue circle?")


_CHECK_ARGUMENT = ProcessorMixin.check_argument_for_proper_class


def _accept_no_video(self, argument_name, argument):
    if argument_name == "video_processor" and argument is None:
        return None
    return _CHECK_ARGUMENT(self, argument_name, argument)


class _RealWithoutVideo(Qwen2VLProcessor):
    """The real Qwen2VLProcessor, accepting ``video_processor=None`` (its video processor needs torchvision)."""

    check_argument_for_proper_class = _accept_no_video


@pytest.fixture(scope="module")
def tokenizer():
    return build_vlm_tokenizer()


def _rgb(rng: np.random.Generator, h: int, w: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _images() -> list:
    rng = np.random.default_rng(0)
    return [
        _rgb(rng, 64, 64), _rgb(rng, 37, 91), _rgb(rng, 300, 200), _rgb(rng, 17, 250),
        PIL.Image.fromarray(rng.integers(0, 256, (50, 60, 4), dtype=np.uint8), "RGBA"),
        PIL.Image.fromarray(rng.integers(0, 256, (45, 61), dtype=np.uint8), "L"),
        rng.integers(0, 256, (64, 65, 3), dtype=np.uint8),  # numpy [H, W, C]
        torch.from_numpy(rng.integers(0, 256, (3, 33, 70), dtype=np.uint8)),  # torch [C, H, W]
    ]  # fmt: skip


def _conversations(images: list) -> list:
    return [
        [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": QUESTIONS[0]}]}],
        [{"role": "user", "content": [{"type": "text", "text": QUESTIONS[1]}, {"type": "image", "image": images[1]},
                                      {"type": "image", "image": images[2]}]}],
        [{"role": "system", "content": "Answer in one word."},
         {"role": "user", "content": [{"type": "image", "image": images[3]}, {"type": "text", "text": QUESTIONS[2]}]}],
    ]  # fmt: skip


# -- image preprocessing ---------------------------------------------------------------------------------


def test_smart_resize_matches_hand_computed_sizes():
    # factor 28, Qwen2-VL's pixel bounds: 37x91 rounds to 28x84 = 2352 px < 3136, so both sides are scaled up
    assert smart_resize(64, 64, 28, 3136, 12845056) == (56, 56)
    assert smart_resize(37, 91, 28, 3136, 12845056) == (56, 112)
    assert smart_resize(300, 200, 28, 3136, 12845056) == (308, 196)
    # factor 16, the tiny model's bounds: 40/16 = 2.5 rounds half to even (to 2); 200x300 is scaled down
    assert smart_resize(64, 64, 16, 1024, 16384) == (64, 64)
    assert smart_resize(40, 90, 16, 1024, 16384) == (32, 96)
    assert smart_resize(200, 300, 16, 1024, 16384) == (96, 144)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 201, 16, 1024, 16384)


@pytest.mark.parametrize("config", [{}, TINY, QWEN3], ids=["qwen2_vl", "tiny", "qwen3_vl"])
def test_pixel_values_are_bitwise_those_of_the_real_image_processor(config):
    real = Qwen2VLImageProcessorPil(**config)
    settings = ImageSettings.from_dict(real.to_dict())
    images = _images()
    expected = real(images, return_tensors="pt")
    pixel_values, grid = process_images(images, settings)
    assert pixel_values.dtype == expected["pixel_values"].dtype == torch.float32
    assert torch.equal(pixel_values, expected["pixel_values"])
    assert torch.equal(grid, expected["image_grid_thw"])


def test_published_and_transformers5_preprocessor_configs_read_alike():
    published = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                 "merge_size": 2, "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}  # fmt: skip
    settings = ImageSettings.from_dict(published)
    assert settings == ImageSettings.from_dict(Qwen2VLImageProcessorPil(**published).to_dict())
    assert (settings.min_pixels, settings.max_pixels, settings.image_mean) == (3136, 12845056, ImageSettings.image_mean)
    for bad, key in (({"patch_size": 0}, "patch_size"), ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
                     ({"min_pixels": 10, "max_pixels": 5}, "min_pixels"), ({"do_center_crop": True}, "do_center_crop")):  # fmt: skip
        with pytest.raises(ValueError, match=key):
            ImageSettings.from_dict(bad)


def test_float_images_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        process_images([np.zeros((64, 64, 3), dtype=np.float32)], ImageSettings(**{**TINY}))


# -- the whole processor ---------------------------------------------------------------------------------


def _pair(tokenizer, config=TINY):
    image_processor = Qwen2VLImageProcessorPil(**config)
    real = _RealWithoutVideo(image_processor, tokenizer, None, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    ours = VLMProcessor(tokenizer, ImageSettings.from_dict(image_processor.to_dict()), QWEN2_VL_CHAT_TEMPLATE)
    return real, ours


def _assert_same(expected, got):
    assert list(got.keys()) == list(expected.keys())
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("config", [TINY, {}], ids=["tiny", "qwen2_vl"])
def test_processor_output_is_that_of_the_real_qwen2vl_processor(tokenizer, config, side):
    real, ours = _pair(tokenizer, config)
    images = _images()
    conversations = _conversations(images)
    prompts = ours.apply_chat_template(conversations, add_generation_prompt=True)
    assert prompts == real.apply_chat_template(conversations, add_generation_prompt=True)
    flat = [images[0], images[1], images[2], images[3]]
    expected = real(text=prompts, images=flat, padding=True, padding_side=side, return_tensors="pt")
    _assert_same(expected, ours(prompts, images=flat, padding_side=side))
    # the images may also come one list per prompt, or straight from the messages
    _assert_same(expected, ours(prompts, images=[[images[0]], images[1:3], [images[3]]], padding_side=side))
    _assert_same(expected, ours.process_chat(conversations, padding_side=side))


def test_text_only_prompts_match_the_real_processor(tokenizer):
    real, ours = _pair(tokenizer)
    prompts = ["what color is the star?", "how many"]
    expected = real(text=prompts, padding=True, return_tensors="pt")
    _assert_same(expected, ours(prompts))


def test_image_token_counts_match_hand_computation(tokenizer):
    _, ours = _pair(tokenizer)
    rng = np.random.default_rng(1)
    sizes = [(64, 64), (40, 90), (200, 300)]  # 8x8, 4x12 and 12x18 patches of 8 px -> /4 merged
    prompts = [f"<|vision_start|><|image_pad|><|vision_end|>{q}" for q in QUESTIONS]
    batch = ours(prompts, images=[_rgb(rng, h, w) for h, w in sizes])
    assert (batch["input_ids"] == ours.image_token_id).sum(1).tolist() == [16, 12, 54]
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 4, 12], [1, 12, 18]]
    assert batch["pixel_values"].shape == (64 + 48 + 216, 3 * 2 * 8 * 8)
    assert [ours.num_image_tokens(h, w) for h, w in sizes] == [16, 12, 54]
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == ours.image_token_id).long())


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_keeps_each_prompt_as_encoded_alone(tokenizer, side):
    _, ours = _pair(tokenizer)
    images = _images()
    conversations = _conversations(images)
    batch = ours.process_chat(conversations, padding_side=side)
    pad = tokenizer.pad_token_id
    for i, conversation in enumerate(conversations):
        alone = ours.process_chat(conversation, padding_side=side)
        n = alone["input_ids"].shape[1]
        mask = batch["attention_mask"][i]
        assert mask.sum().item() == n
        real = slice(len(mask) - n, None) if side == "left" else slice(0, n)
        pads = slice(0, len(mask) - n) if side == "left" else slice(n, None)
        assert torch.equal(batch["input_ids"][i, real], alone["input_ids"][0])
        assert torch.equal(batch["mm_token_type_ids"][i, real], alone["mm_token_type_ids"][0])
        assert (batch["input_ids"][i, pads] == pad).all() and (mask[pads] == 0).all() and (mask[real] == 1).all()
        assert (batch["mm_token_type_ids"][i, pads] == 0).all()
    assert batch["attention_mask"].dtype == batch["input_ids"].dtype == torch.int64


def test_image_count_must_match_placeholders(tokenizer):
    _, ours = _pair(tokenizer)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> tokens and 2 images"):
        ours(["<|image_pad|> what"], images=_images()[:2])


# -- files -----------------------------------------------------------------------------------------------


def test_saved_folder_loads_with_the_real_auto_classes(tokenizer, tmp_path, monkeypatch):
    _, ours = _pair(tokenizer)
    written = {p.name for p in ours.save_pretrained(tmp_path)}
    assert {"preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= written
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor" and config["image_processor_type"] == "Qwen2VLImageProcessor"
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"

    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert {**json.loads(image_processor.to_json_string()), "processor_class": "Qwen2VLProcessor"} == config
    assert AutoTokenizer.from_pretrained(tmp_path)("how many stars")["input_ids"] == tokenizer("how many stars")["input_ids"]

    # AutoProcessor resolves every file of the folder; only its video processor needs torchvision
    monkeypatch.setattr(video_processing_auto.AutoVideoProcessor, "from_pretrained", classmethod(lambda *a, **k: None))
    monkeypatch.setattr(Qwen2VLProcessor, "check_argument_for_proper_class", _accept_no_video)
    real = AutoProcessor.from_pretrained(tmp_path)
    assert type(real) is Qwen2VLProcessor and real.chat_template == QWEN2_VL_CHAT_TEMPLATE

    reloaded = VLMProcessor.from_pretrained(tmp_path)
    images = _images()
    conversations = _conversations(images)
    prompts = real.apply_chat_template(conversations, add_generation_prompt=True)
    expected = real(text=prompts, images=images[:4], padding=True, padding_side="left", return_tensors="pt")
    _assert_same(expected, reloaded.process_chat(conversations, padding_side="left"))


def test_chat_template_comes_from_the_files_in_the_real_order(tokenizer, tmp_path):
    _, ours = _pair(tokenizer)
    ours.save_pretrained(tmp_path)
    assert VLMProcessor.from_pretrained(tmp_path).chat_template == QWEN2_VL_CHAT_TEMPLATE
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "legacy {{ messages }}"}))
    assert VLMProcessor.from_pretrained(tmp_path).chat_template == "legacy {{ messages }}"  # .json wins, as in transformers
    (tmp_path / "chat_template.json").unlink()
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "tok {{ messages }}"}))
    assert VLMProcessor.from_pretrained(tmp_path).chat_template == "tok {{ messages }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    bare = VLMProcessor.from_pretrained(tmp_path)
    assert bare.chat_template is None
    with pytest.raises(UserError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
