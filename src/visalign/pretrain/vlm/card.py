"""The tiny VLM's model card (README.md): what it is, how it was trained, its test-split scores, how to load it.

Every number comes from the config and ``final_eval.json`` (the run's own final evaluation), so the card cannot
drift from the weights beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visalign.pretrain.vlm.config import VLMPretrainConfig

BAND = (0.30, 0.60)  # the held-out quality band the base model should land in (room for RL, signal to learn from)


def _row(name: str, value: float | None) -> str:
    return f"| {name} | {'-' if value is None else f'{value:.3f}'} |"


def _data(cfg: VLMPretrainConfig) -> str:
    d = cfg.data
    what = ("counting, colour, shape, two kinds of spatial relation, reading a number, grounding a box")
    text = (f"{7 * d.train_per_type:,} generated train-split questions (`train_per_type: {d.train_per_type}`; {what})"
            if d.train_per_type else f"the train questions of `{d.train}` ({what})")
    if d.caption_fraction:
        share = f"{d.caption_fraction:.0%}"
        style = "the scene's prompt" if d.caption_style == "prompt" else "every object with its box"
        text += f", with {share} of each batch asking for a caption of a train image ({style})"
    return text


def _decay(cfg: VLMPretrainConfig) -> str:
    return f", linear decay over the last {cfg.train.decay_steps}" if cfg.train.decay_steps else ""


def card_text(cfg: VLMPretrainConfig, final: dict[str, Any]) -> str:
    m, t = cfg.model, cfg.train
    rows = [_row("**overall**", final["overall"]), _row("held-out combinations", final["held_out"]),
            _row("seen combinations", final["seen"])]
    rows += [_row(kind, value) for kind, value in final["per_type"].items()]
    band = "inside" if BAND[0] <= final["overall"] <= BAND[1] else "outside"
    weak = [k for k, v in final["per_type"].items() if v is not None and v <= 0.10]
    weak_text = f"; {', '.join(weak)} at or below 0.10, where the band asks every type above it" if weak else ""
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [visalign, shapesworld, qwen2_vl]
---

# shapes-vlm: a tiny Qwen2-VL that answers questions about ShapesWorld scenes

A `Qwen2VLForConditionalGeneration` of {final['parameters']:,} parameters (language model: width {m.hidden_size},
{m.layers} layers, {m.heads} heads / {m.kv_heads} KV heads; vision tower: width {m.vision_dim}, {m.vision_depth}
blocks, patch 8, 2 x 2 merge, so a 64 x 64 image is 16 tokens), with a word-level tokenizer over the ShapesWorld
vocabulary and Qwen2-VL-Instruct's chat template. It is the base model of visalign's vision-language RL quickstart
(`recipes/vlm_quickstart.yaml`).

## Training
Supervised fine-tuning from random weights on {_data(cfg)}: cross-entropy on the answer tokens, {final['step']} steps
of batch {t.batch_size}, AdamW at {t.lr:g} (warm-up {t.warmup} steps{_decay(cfg)}, weight decay {t.weight_decay:g},
gradient clip {t.grad_clip:g}), seed {cfg.seed}; {final['train_wall_s'] / 60:.1f} minutes of training steps on
{cfg.threads} CPU threads. Reproduce it with `visalign pretrain --config configs/pretrain/vlm.yaml`.

## Test-split scores (greedy answers, exact match; a box counts when its IoU with the target is at least 0.5)
{final['n']} questions of `{cfg.data.test}`, 30 of every 50 per type on combinations held out of train.
The overall score is {band} the band {BAND[0]:.2f}-{BAND[1]:.2f} set for an RL base model{weak_text}.

| questions | exact match |
|---|---|
{chr(10).join(rows)}

## Use
```python
from transformers import Qwen2VLForConditionalGeneration
from visalign.models.vlm_processor import VLMProcessor

model = Qwen2VLForConditionalGeneration.from_pretrained("path/to/shapes-vlm")
processor = VLMProcessor.from_pretrained("path/to/shapes-vlm")  # the Qwen2-VL processor's tokens, no torchvision
```
In a visalign config: `model: {{name: shapes-vlm}}`.
"""


def write_card(folder: Path, cfg: VLMPretrainConfig, final: dict[str, Any]) -> Path:
    path = folder / "README.md"
    path.write_text(card_text(cfg, final))
    return path
