"""The config of the tiny VLM's supervised fine-tuning: ``visalign pretrain --config configs/pretrain/vlm.yaml``.

The ``model`` section sizes the ``Qwen2VLForConditionalGeneration`` of ``models/vlm_build.py`` (``TinyVLMSpec``);
``train`` is a next-token cross-entropy on the answer tokens of the train-split questions; ``log.eval_every``
exports the model and scores it on the test split (greedy answers, exact match), so the step a card names can be
read off ``eval.jsonl`` and reproduced with ``train.steps=N`` (the learning rate is constant after the warm-up
unless ``train.decay_steps`` is set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from visalign.config_io import StrictModel


class VLMArchitecture(StrictModel):
    """``TinyVLMSpec``'s sizes (the defaults are the spec's)."""

    hidden_size: int = Field(default=128, ge=8, le=4096)
    layers: int = Field(default=6, ge=1, le=64)
    heads: int = Field(default=4, ge=1, le=64)
    kv_heads: int = Field(default=2, ge=1, le=64)
    intermediate_size: int = Field(default=512, ge=8, le=16384)
    vision_dim: int = Field(default=64, ge=8, le=4096)
    vision_depth: int = Field(default=2, ge=1, le=64)
    vision_heads: int = Field(default=4, ge=1, le=64)
    patch_size: int = Field(default=8, ge=1, le=64)  # 8: a 64 px image is 8 x 8 patches, 16 tokens after the merge
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    rope_theta: float = Field(default=10000.0, gt=1)  # the language model's rotary base (TinyVLMSpec)


class VLMDataConfig(StrictModel):
    # question files: a shipped split name (qa_train / qa_test) or a JSONL path in the same schema
    train: str = "qa_train"
    test: str = "qa_test"
    # > 0 with train qa_train: train on generate_qa_splits(0, train_per_type=N)'s train split instead of the shipped
    # file (its first 300 per type; the same test split and held-out combinations, no test render seed), written
    # once to run_dir/qa_train_generated.jsonl
    train_per_type: int = Field(default=0, ge=0, le=100_000)
    # share of each batch that asks for a caption of a train image instead ("What is shown in the image?" ->
    # the scene's prompt, e.g. "two red circles and a blue star"): every object's colour and shape, named
    caption_fraction: float = Field(default=0.0, ge=0, lt=1)
    # prompt: the caption is the scene's prompt; boxes: every object left to right with its box,
    # "blue square [12, 40, 25, 53], red circle [30, 8, 47, 25]" (a number scene: "the number 98")
    caption_style: Literal["prompt", "boxes"] = "prompt"
    eval_items: int = Field(default=0, ge=0)  # test items scored at each evaluation (0: all), taken round-robin by type


class VLMTrainConfig(StrictModel):
    steps: int = Field(default=3000, ge=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    warmup: int = Field(default=100, ge=0)
    decay_steps: int = Field(default=0, ge=0)  # linear decay to 0 over the last N steps
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    # token: the mean over the batch's answer tokens (a caption of 12 tokens weighs 6 two-token answers);
    # example: each example's mean token loss, then the mean over examples
    loss_average: Literal["token", "example"] = "token"
    # > 0: add this weight times the dense loss of the vision tokens (pretrain/vlm/dense.py: every patch's class,
    # colour and centre mark, read from the scene by a linear head that is not exported)
    dense_weight: float = Field(default=0.0, ge=0)


class VLMLogConfig(StrictModel):
    every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=250, ge=1)
    eval_every: int = Field(default=500, ge=0)
    max_new_tokens: int = Field(default=24, ge=1)  # greedy answer length at evaluation


class VLMExportConfig(StrictModel):
    path: str | None = None  # also copy the final model folder here (e.g. src/visalign/assets/shapes-vlm)


class VLMPretrainConfig(StrictModel):
    family: Literal["vlm"] = "vlm"
    seed: int = 0
    run_dir: str = "runs/pretrain-vlm"
    threads: int = Field(default=2, ge=1)
    model: VLMArchitecture = VLMArchitecture()
    data: VLMDataConfig = VLMDataConfig()
    train: VLMTrainConfig = VLMTrainConfig()
    log: VLMLogConfig = VLMLogConfig()
    export: VLMExportConfig = VLMExportConfig()


def is_vlm_config(path: str | Path) -> bool:
    """Whether the pretraining config file at ``path`` is the VLM's (``family: vlm``) rather than an image model's."""
    from visalign.config_io import read_yaml

    raw = read_yaml(path)
    return isinstance(raw, dict) and raw.get("family") == "vlm"
