"""A processor for Qwen2-VL-class models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) that needs no torchvision.

transformers' ``AutoProcessor`` cannot build these models' processors without torchvision: their
``video_processor`` (``Qwen2VLVideoProcessor``) requires it even when no video is ever passed. This class
reproduces what ``Qwen2VLProcessor`` (``models/qwen2_vl/processing_qwen2_vl.py`` with
``ProcessorMixin.__call__`` / ``apply_chat_template`` of ``processing_utils.py``) returns for images and chat
messages:

* ``apply_chat_template`` renders the folder's chat template with the tokenizer's Jinja renderer (the
  template variables include the tokenizer's special tokens, as in ``ProcessorMixin.apply_chat_template``);
* ``__call__`` runs the image preprocessing of ``vlm_image.py`` (bit for bit ``Qwen2VLImageProcessorPil``),
  replaces the i-th ``<|image_pad|>`` of the batch by ``grid_t * grid_h * grid_w / merge_size**2`` copies
  (``Qwen2VLProcessor.replace_image_token``), tokenises with the folder's tokenizer and adds
  ``mm_token_type_ids`` (1 on image tokens, 2 on video tokens, else 0; ``create_mm_token_type_ids``), which
  the model needs for its multimodal rotary positions.

It returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values`` and ``image_grid_thw``
as tensors, always padded to the longest sequence (``padding_side`` left for generation, right for
scoring). ``save_pretrained`` writes the published layout (``preprocessor_config.json``, tokenizer files,
``chat_template.jinja``), from which the real ``AutoProcessor`` resolves ``Qwen2VLProcessor``, its image
processor, tokenizer and chat template (its video processor then needs torchvision).

Not reproduced: videos, ``return_tensors`` other than PyTorch, truncation, the processor's own tokenisation
path of ``apply_chat_template(tokenize=True)`` with image URLs or paths (pass image objects), and the
``sanitize_control_tokens`` marking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from visalign.errors import UserError, one_line
from visalign.models.loading import read_json_object
from visalign.models.vlm_files import (
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    read_chat_template,
    read_image_settings,
    set_processor_class,
    write_chat_template,
    write_preprocessor_config,
)
from visalign.models.vlm_image import ImageLike, ImageSettings, process_images

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
Conversation = Sequence[Mapping[str, Any]]


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of ``token`` when the tokenizer holds it as one token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(folder)`` offline and without remote code; a ``UserError`` naming the
    tokenizer file for a missing or broken one."""
    tokenizer_file = folder / TOKENIZER_FILE
    if not tokenizer_file.is_file() and not (folder / "vocab.json").is_file():
        raise UserError(f"{folder}: missing {TOKENIZER_FILE} (the tokenizer)")
    config_file = folder / TOKENIZER_CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{folder}: missing {TOKENIZER_CONFIG_FILE} (the tokenizer's settings)")
    config = read_json_object(config_file)
    if "auto_map" in config:
        raise UserError(f"{config_file} [auto_map]: tokenizers defined by remote code are not loaded")
    if tokenizer_file.is_file():
        read_json_object(tokenizer_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # the tokenizers library raises bare Exceptions for a malformed tokenizer.json
        raise UserError(
            f"{tokenizer_file}: could not load the tokenizer ({type(err).__name__}: {one_line(err, 300)})"
        ) from None
    return tokenizer


class VLMProcessor:
    """Images + chat messages -> the inputs of a Qwen2-VL-class model, exactly as ``Qwen2VLProcessor``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_settings: ImageSettings | None = None,
        chat_template: str | None = None,
        processor_class: str = "Qwen2VLProcessor",
        source: Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_settings = image_settings or ImageSettings()
        self.chat_template = chat_template
        self.processor_class = processor_class
        self.source = source
        image_token_id = _token_id(tokenizer, IMAGE_TOKEN)
        if image_token_id is None:
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token")
        self.image_token_id: int = image_token_id
        self.video_token_id: int | None = _token_id(tokenizer, VIDEO_TOKEN)

    # -- files ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VLMProcessor:
        """Read ``preprocessor_config.json`` (or ``processor_config.json``), the tokenizer and the chat
        template of a checkpoint folder; every missing or broken file is a ``UserError`` naming it."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"{folder}: no such checkpoint folder")
        settings, processor_class, _ = read_image_settings(folder)
        tokenizer = load_tokenizer(folder)
        template, _ = read_chat_template(folder, getattr(tokenizer, "chat_template", None))
        try:
            return cls(tokenizer, settings, template, processor_class or "Qwen2VLProcessor", source=folder)
        except ValueError as err:
            raise UserError(f"{folder / TOKENIZER_FILE}: {err} (a Qwen-VL tokenizer must hold it)") from None

    def save_pretrained(self, folder: str | Path) -> list[Path]:
        """Write the tokenizer files, ``preprocessor_config.json`` and ``chat_template.jinja``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = [Path(f) for f in self.tokenizer.save_pretrained(str(folder))]
        set_processor_class(folder, self.processor_class)
        written.append(write_preprocessor_config(folder, self.image_settings, self.processor_class))
        if self.chat_template is not None:
            written.append(write_chat_template(folder, self.chat_template))
        return sorted(set(written))

    # -- text -------------------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        conversation: Conversation | Sequence[Conversation],
        add_generation_prompt: bool = False,
        **template_kwargs: Any,
    ) -> str | list[str]:
        """The prompt string(s) of one conversation or a batch of them (``tokenize=False`` of the real one)."""
        if self.chat_template is None:
            where = self.source if self.source is not None else "this processor"
            raise UserError(f"{where}: no chat template (chat_template.jinja / chat_template.json / tokenizer_config.json)")
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **template_kwargs,
        )

    def expand_image_tokens(self, text: Sequence[str], image_grid_thw: torch.Tensor | None) -> list[str]:
        """Replace the i-th ``<|image_pad|>`` of the batch by as many copies as image i has merged patches."""
        counts = [] if image_grid_thw is None else (image_grid_thw.prod(-1) // self.merge_size**2).tolist()
        out, k = [], 0
        for sample in text:
            pieces = sample.split(IMAGE_TOKEN)
            expanded = pieces[0]
            for piece in pieces[1:]:
                expanded += IMAGE_TOKEN * counts[k] + piece
                k += 1
            out.append(expanded)
        return out

    # -- the call ---------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        images: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]] | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> BatchFeature:
        """Tokenise prompts holding one ``<|image_pad|>`` per image, with the images in order of appearance
        (a flat list, or one list per prompt). ``padding_side`` defaults to the tokenizer's."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a non-empty list of strings")
        flat = _flat_images(images)
        n_tokens = sum(t.count(IMAGE_TOKEN) for t in texts)
        if n_tokens != len(flat):
            raise ValueError(
                f"The total number of {IMAGE_TOKEN} tokens in the prompts should be the same as the number of "
                f"images passed. Found total {n_tokens} {IMAGE_TOKEN} tokens and {len(flat)} images."
            )
        data: dict[str, torch.Tensor] = {}
        grid = None
        if flat:
            pixel_values, grid = process_images(flat, self.image_settings)
        expanded = self.expand_image_tokens(texts, grid)
        encoded = self.tokenizer(expanded, padding=True, padding_side=padding_side, return_tensors="pt")
        input_ids = encoded["input_ids"]
        if (input_ids == self.image_token_id).sum().item() != sum(t.count(IMAGE_TOKEN) for t in expanded):
            raise ValueError(f"the tokenizer split {IMAGE_TOKEN} into several tokens or merged it with text")
        data["input_ids"] = input_ids
        data["attention_mask"] = encoded["attention_mask"]
        data["mm_token_type_ids"] = self.mm_token_type_ids(input_ids)
        if flat:
            data["pixel_values"] = pixel_values
            data["image_grid_thw"] = grid
        return BatchFeature(data)

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 on image tokens, 2 on video tokens, 0 elsewhere (``ProcessorMixin.create_mm_token_type_ids``)."""
        types = torch.zeros_like(input_ids)
        types[input_ids == self.image_token_id] = 1
        if self.video_token_id is not None:
            types[input_ids == self.video_token_id] = 2
        return types

    def process_chat(
        self,
        conversations: Conversation | Sequence[Conversation],
        add_generation_prompt: bool = True,
        padding_side: Literal["left", "right"] | None = "left",
    ) -> BatchFeature:
        """Render conversations and process the images their messages hold (``{"type": "image", "image": x}``)."""
        batch = [conversations] if _is_conversation(conversations) else list(conversations)
        prompts = self.apply_chat_template(batch, add_generation_prompt=add_generation_prompt)
        images = [_message_images(conversation) for conversation in batch]
        return self(prompts, images=images if any(images) else None, padding_side=padding_side)

    # -- decoding and properties ------------------------------------------------------------------------

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, sequence: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def merge_size(self) -> int:
        return self.image_settings.merge_size

    def num_image_tokens(self, height: int, width: int) -> int:
        """``<|image_pad|>`` tokens an image of ``height`` x ``width`` pixels expands to."""
        return self.image_settings.num_image_tokens(height, width)


def _flat_images(images: Any) -> list[ImageLike]:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat: list[ImageLike] = []
    for item in images:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return flat


def _is_conversation(value: Any) -> bool:
    return isinstance(value, Sequence) and len(value) > 0 and isinstance(value[0], Mapping)


def _message_images(conversation: Conversation) -> list[ImageLike]:
    images = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        for item in content:
            if item.get("type") == "image" or "image" in item or "image_url" in item:  # as the template
                if "image" not in item:
                    raise ValueError("an image message item must hold the image itself under 'image'")
                images.append(item["image"])
    return images
