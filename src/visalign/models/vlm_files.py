"""The processor files of a Qwen-VL checkpoint folder: reading and writing them in the published layout.

A Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder on the Hub holds, besides the model:

* ``preprocessor_config.json``: the image processor's settings (``min_pixels`` / ``max_pixels`` or ``size``,
  ``patch_size``, ``merge_size``, ``temporal_patch_size``, ``image_mean`` / ``image_std``, ...) and
  ``processor_class``. transformers 5 may instead write ``processor_config.json`` with the image processor's
  settings nested under ``"image_processor"``; both are read, ``preprocessor_config.json`` first (as
  ``AutoImageProcessor`` does).
* the chat template: ``chat_template.json`` (``{"chat_template": "..."}``, the published checkpoints),
  ``chat_template.jinja`` (what transformers 5 writes) or the ``chat_template`` key of
  ``tokenizer_config.json``. ``ProcessorMixin.get_processor_dict`` prefers ``chat_template.json`` over
  ``chat_template.jinja``; the tokenizer's own template is the last resort here.
* ``tokenizer.json`` + ``tokenizer_config.json``, read with ``AutoTokenizer``.

Every malformed file is a ``UserError`` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visalign.errors import UserError
from visalign.models.loading import read_json_object
from visalign.models.vlm_image import ImageSettings

PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
CHAT_TEMPLATE_JSON = "chat_template.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# The chat template of Qwen2-VL-2B/7B-Instruct (its chat_template.json), also used by Qwen2.5-VL-Instruct.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def read_image_settings(folder: Path) -> tuple[ImageSettings, str | None, Path]:
    """(settings, ``processor_class`` or None, the file read) from ``preprocessor_config.json`` or
    ``processor_config.json``; a missing or malformed file is a ``UserError`` naming it."""
    file = folder / PREPROCESSOR_FILE
    if file.is_file():
        config = read_json_object(file)
    elif (folder / PROCESSOR_FILE).is_file():
        file = folder / PROCESSOR_FILE
        outer = read_json_object(file)
        config = outer.get("image_processor")
        if not isinstance(config, dict):
            raise UserError(f"{file} [image_processor]: missing (expected the image processor's settings)")
        config = {"processor_class": outer.get("processor_class"), **config}
    else:
        raise UserError(f"{folder}: missing {PREPROCESSOR_FILE} (the image processor's settings)")
    processor_class = config.get("processor_class")
    try:
        settings = ImageSettings.from_dict(config)
    except (ValueError, TypeError) as err:
        raise UserError(f"{file}: {err}") from None
    return settings, processor_class if isinstance(processor_class, str) else None, file


def write_preprocessor_config(folder: Path, settings: ImageSettings, processor_class: str) -> Path:
    """Write ``preprocessor_config.json`` as ``ImageProcessingMixin.to_json_string`` does (indent 2, sorted)."""
    data = {**settings.to_dict(), "processor_class": processor_class}
    file = folder / PREPROCESSOR_FILE
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return file


def read_chat_template(folder: Path, tokenizer_template: Any = None) -> tuple[str | None, Path | None]:
    """(the default chat template, the file it came from); ``(None, None)`` when the folder has none."""
    json_file = folder / CHAT_TEMPLATE_JSON
    if json_file.is_file():
        template = read_json_object(json_file).get("chat_template")
        if not isinstance(template, str):
            raise UserError(f"{json_file} [chat_template]: expected the template as a string")
        return template, json_file
    jinja_file = folder / CHAT_TEMPLATE_JINJA
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8"), jinja_file
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{jinja_file}: cannot read the chat template ({err})") from None
    if isinstance(tokenizer_template, dict):
        tokenizer_template = tokenizer_template.get("default")
    if isinstance(tokenizer_template, str):
        return tokenizer_template, folder / TOKENIZER_CONFIG_FILE
    return None, None


def write_chat_template(folder: Path, template: str) -> Path:
    """Write ``chat_template.jinja`` (transformers 5's format); refresh a ``chat_template.json`` already there,
    which loaders read first, so that the two never disagree."""
    file = folder / CHAT_TEMPLATE_JINJA
    file.write_text(template, encoding="utf-8")
    legacy = folder / CHAT_TEMPLATE_JSON
    if legacy.is_file():
        legacy.write_text(json.dumps({"chat_template": template}, indent=2) + "\n", encoding="utf-8")
    return file


def set_processor_class(folder: Path, processor_class: str) -> None:
    """Record ``processor_class`` in ``tokenizer_config.json``, as ``ProcessorMixin.save_pretrained`` does."""
    file = folder / TOKENIZER_CONFIG_FILE
    config = read_json_object(file)
    config["processor_class"] = processor_class
    file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
