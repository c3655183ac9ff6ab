"""The supervised examples of the tiny VLM: each question's prompt tokens, its image inputs and its answer tokens.

Captions: ``caption_examples`` asks the same images "What is shown in the image?" with the scene's prompt as the
answer (the image inputs are shared, not copied): one caption names every object's colour and shape, which a
single question never does, and taught colour within a few hundred steps where questions alone did not
(docs/models.md).

An example is encoded once (the image rendered and cut into patches by ``VLMProcessor``, the conversation put
through the chat template with the generation prompt) and kept in memory: 2,100 questions take a few seconds and
about 200 MB. The target is the answer's tokens followed by the end-of-turn token, exactly what the policy
samples after the generation prompt; only those positions carry a loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from visalign.models.vlm import encode_question


@dataclass(frozen=True)
class SFTExample:
    prompt: list[int]
    answer: list[int]  # the answer's tokens and the end-of-turn token
    extra: dict[str, torch.Tensor]  # pixel_values, image_grid_thw
    dense: torch.Tensor | None = None  # the image's patch labels (dense.patch_targets), when dense loss is on


def encode_examples(processor: Any, items: Sequence[dict[str, Any]]) -> list[SFTExample]:
    """Every item as an ``SFTExample`` (its ``answer`` is the target text)."""
    tok = processor.tokenizer
    end = tok.eos_token_id
    out = []
    for item in items:
        prompt, extra = encode_question(processor, item)
        answer = list(tok(str(item["answer"]), add_special_tokens=False)["input_ids"]) + [end]
        out.append(SFTExample(prompt, answer, extra))
    return out


CAPTION_QUESTION = "What is shown in the image?"


def box_caption(item: dict[str, Any]) -> str:
    """Every object of the item's scene, left to right, with its colour, shape and pixel box."""
    from visalign.worlds.shapes.questions import question_scene
    from visalign.worlds.shapes.questions_scene import pixel_box

    scene = question_scene(item)
    if not scene.objects:
        return str(item["image"]["metadata"]["prompt"])
    parts = []
    for obj in sorted(scene.objects, key=lambda o: (o.cx, o.cy)):
        x0, y0, x1, y1 = pixel_box(obj, scene.size)
        parts.append(f"{obj.color} {obj.shape} [{x0}, {y0}, {x1}, {y1}]")
    return ", ".join(parts)


def caption_examples(processor: Any, items: Sequence[dict[str, Any]], questions: Sequence[SFTExample],
                     style: str = "prompt") -> list[SFTExample]:
    """One caption example per distinct image of ``items`` (``questions`` are their encoded examples); ``style``
    ``prompt`` answers with the scene's prompt, ``boxes`` with ``box_caption``."""
    tok = processor.tokenizer
    out, seen = [], set()
    for item, example in zip(items, questions, strict=True):
        image = item.get("image") or {}
        key = (image.get("seed"), (image.get("metadata") or {}).get("prompt"))
        if key in seen or not key[1]:
            continue
        seen.add(key)
        caption = {**item, "messages": [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": CAPTION_QUESTION}]}]}
        prompt = encode_question(processor, caption)[0]  # the image's tokens are the question's
        text = box_caption(item) if style == "boxes" else str(key[1])
        answer = list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
        out.append(SFTExample(prompt, answer, example.extra, example.dense))
    return out


def collate(examples: Sequence[SFTExample], pad_token_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids`` / ``attention_mask``, ``labels`` (-100 off the answers: the convention of
    transformers' losses) and the images' inputs and patch labels (``dense``), concatenated in batch order."""
    length = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, e in enumerate(examples):
        n, p = len(e.prompt) + len(e.answer), len(e.prompt)
        ids[row, :n] = torch.tensor(e.prompt + e.answer)
        attention[row, :n] = 1
        labels[row, p:n] = torch.tensor(e.answer)
    extra = {k: torch.cat([e.extra[k] for e in examples]) for k in examples[0].extra}
    dense = torch.cat([e.dense for e in examples]) if all(e.dense is not None for e in examples) else None
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "extra": extra, "dense": dense}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, average: str = "token") -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens: the mean over the batch's answer tokens (``token``), or
    each example's mean, then the mean over examples (``example``: a one-word answer weighs what a caption does)."""
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100,
        reduction="none").view(targets.shape)
    mask = (targets != -100).float()
    if average == "example":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()
    return (per_token * mask).sum() / mask.sum().clamp_min(1)
