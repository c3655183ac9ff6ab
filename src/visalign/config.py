"""The training config: typed, validated, YAML recipes plus dotted ``key=value`` overrides.

``visalign train --config recipes/quickstart.yaml train.iterations=40 algorithm.options.kl_beta=0.04``

Every section forbids unknown keys; a typo names the closest valid key (``visalign.config_io``). Beyond the
types, loading checks what a run would otherwise find out only after the model has loaded: the rewards and the
algorithm exist and take the options given, the prompt files can be read (``Config.semantic_problems``). The
resolved config is written into every run directory as ``config.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from visalign.config_io import StrictModel, dump_config, explain, load_config


class ModelConfig(StrictModel):
    name: str = "shapes-flow"  # shipped alias (shapes-flow, shapes-diffusion), diffusers folder, or hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # image side in pixels; None: the model's native size. The model checks that it can take it (a multiple of its
    # VAE factor x patch size) when it loads: models/base.py
    resolution: int | None = Field(None, gt=0)
    max_sequence_length: int | None = None  # SD3 only: zero T5 tokens; None: from the model folder, else 256
    negative_prompt: str = ""


class FinetuneConfig(StrictModel):
    mode: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]


class SamplingConfig(StrictModel):
    kernel: str = "sde"  # flow: sde | cps | dance (| ode for final-sample algorithms) ; diffusion: ddim
    noise_level: float = Field(0.7, ge=0.0)  # Flow-SDE a, CPS a, or DDIM eta
    # k > 1: the stochastic steps' noise is confined to k x k block averages of the latent (sde, ddim), a k^2-fold
    # smaller space for the policy gradient to search (sampling/base.py; it did not help on ShapesWorld)
    noise_pool: int = Field(1, ge=1)
    num_steps: int = Field(10, ge=1)
    guidance_scale: float = 1.0  # > 1: classifier-free guidance, in rollouts and training alike
    train_steps: int = Field(0, ge=0)  # trained steps per sample (0: every trainable step)
    timestep_fraction: float | None = Field(None, gt=0.0, le=1.0)  # alternative to train_steps
    shuffle_steps: bool = True  # random subset per sample (else the first ones)
    train_window: list[int] | None = None  # [first, last+1] of steps that may be trained
    sde_window: list[int] | None = None  # [first, last+1] of steps sampled stochastically (others: ODE)
    batch_size: int = Field(0, ge=0)  # samples per network call during rollouts (0: all)
    # token policies (language / vision-language models): how answers are sampled
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop_strings: list[str] = []


class AlgorithmConfig(StrictModel):
    name: str = "flow_grpo"
    options: dict[str, Any] = {}


class RewardSpec(StrictModel):
    name: str = "shapes_soft"  # the ShapesWorld verifier's partial credit (rewards/shapes.py)
    weight: float = 1.0
    options: dict[str, Any] = {}


class AdvantageConfig(StrictModel):
    mode: Literal["group", "gdpo", "rloo", "reinforce_pp"] = "group"  # rloo / reinforce_pp: advantages.py
    std: Literal["group", "global", "none"] = "group"  # none: R - mean_group R (Dr. GRPO)
    clip: float = Field(5.0, gt=0)
    eps: float = Field(1e-4, gt=0)
    # the std's divisor is N - std_correction: 0 the population std (GRPO implementations), 1 Bessel's (DanceGRPO)
    std_correction: Literal[0, 1] = 0


class DataConfig(StrictModel):
    train: str = "train"  # ShapesWorld split name, or a prompt file (.jsonl with "prompt" / .txt)
    test: str = "test"
    # prompt sources whose prompts are taken out of data.train (by prompt text): [iid] keeps the i.i.d. held-out
    # split (drawn from the train split, worlds/shapes/prompts.py) out of training
    exclude: list[str] = []
    # the splits read from a question-set folder in the Hub layout (data/{split}-*.parquet; vqa_data.py)
    train_split: str = "train"
    test_split: str = "test"
    # a question set's question as the policy reads it: "{question}" is replaced by the row's question, e.g.
    # "{question} Think in <think> </think>, then answer in <answer> </answer>." (R1-style recipes)
    question_template: str | None = None

    @field_validator("question_template")
    @classmethod
    def _names_the_question(cls, value: str | None) -> str | None:
        if value is not None and "{question}" not in value:
            raise ValueError('must contain "{question}" (where the row\'s question goes)')
        return value
    prompts_per_iter: int = Field(8, ge=1)  # global number of prompts (groups) per iteration
    group_size: int = Field(4, ge=2)  # G images per prompt
    # repeat each "tag"'s prompts up to the largest tag's count, so that every tag is drawn equally often (the
    # ShapesWorld train split is 30% text and 30% color_attr; its test split has 10 prompts per tag)
    balance_tags: bool = False


class EMAConfig(StrictModel):
    enabled: bool = False
    decay: float = Field(0.95, ge=0.0, lt=1.0)


class TrainConfig(StrictModel):
    iterations: int = Field(20, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: list[float] = [0.9, 0.999]  # AdamW's (beta1, beta2), each in [0, 1)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)  # max grad norm (0: off)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_iters: int = Field(0, ge=0)
    inner_epochs: int = Field(1, ge=1)  # passes over each rollout
    minibatch_size: int = Field(0, ge=0)  # samples per optimizer minibatch per process (0: the whole rollout)
    grad_accum: int = Field(1, ge=1)  # minibatches per optimizer step
    skip_zero_variance: bool = True  # do not spend compute on samples of zero-variance groups
    ema: EMAConfig = EMAConfig()
    threads: int = Field(0, ge=0)  # torch threads (0: leave as is)
    time_budget_min: float | None = Field(None, gt=0)  # stop early (then evaluate) so that the run fits this wall time

    @field_validator("betas")
    @classmethod
    def _adam_betas(cls, betas: list[float]) -> list[float]:
        # torch checks these only when the optimizer is built, after the model has loaded
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW takes two betas, each in [0, 1), got {betas}")
        return betas


class EvalConfig(StrictModel):
    every: int = Field(10, ge=0)  # iterations between evaluations (0: only before and after training)
    num_steps: int = Field(20, ge=1)
    guidance_scale: float | None = None  # None: same as sampling
    max_prompts: int = Field(0, ge=0)  # 0: the whole test split
    images_per_prompt: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    use_ema: bool = True
    seed: int = 1234
    enabled: bool = True
    # a second held-out split, scored like data.test before training and at the end only (e.g. test, the
    # compositional split, beside data.test: iid); summary.json reports it under "second_split"
    second_split: str | None = None


class LogConfig(StrictModel):
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "visalign"
    progress: bool = True
    grid_per_tag: int = Field(2, ge=0)  # prompts per tag in the report's before/after grids


class CheckpointConfig(StrictModel):
    every: int = Field(10, ge=0)  # iterations between checkpoints (0: only at the end)
    keep_last: int = Field(2, ge=1)


class Config(StrictModel):
    seed: int = 0
    run_dir: str = "runs/run"
    resume: str | None = None  # None | "auto" (latest in run_dir/checkpoints) | a checkpoint folder
    stop_after: int | None = None  # stop (with a checkpoint) after this iteration, e.g. to test resuming
    model: ModelConfig = ModelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    sampling: SamplingConfig = SamplingConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    rewards: list[RewardSpec] = [RewardSpec()]
    advantage: AdvantageConfig = AdvantageConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        # messages start with the dotted key at fault: that is how config_io names the file or override that set it
        for name in ("train_window", "sde_window"):
            window = getattr(self.sampling, name)
            if window is not None and (len(window) != 2 or not 0 <= window[0] < window[1] <= self.sampling.num_steps):
                raise ValueError(f"sampling.{name} must be [first, last+1] within 0..{self.sampling.num_steps}, "
                                 f"got {window}")
        if not self.rewards:
            raise ValueError("rewards: give at least one reward")
        return self

    def semantic_problems(self) -> Iterator[tuple[str, str]]:
        yield from _reward_problems(self.rewards)
        yield from _algorithm_problems(self.algorithm)
        yield from _prompt_file_problems("data.train", self.data.train)
        if self.eval.enabled:
            yield from _prompt_file_problems("data.test", self.data.test)

    def trained_steps_per_sample(self, trainable: int) -> int:
        if self.sampling.timestep_fraction is not None:
            return max(1, int(round(trainable * self.sampling.timestep_fraction)))
        return self.sampling.train_steps


def _reward_problems(specs: list[RewardSpec]) -> Iterator[tuple[str, str]]:
    """Unknown rewards, and options their constructors do not take, before the model loads."""
    from visalign.rewards.base import reward_option_problems

    for i, spec in enumerate(specs):
        for key, text in reward_option_problems(spec.name, spec.options):
            yield (f"rewards.{i}.options.{key}" if key else f"rewards.{i}.name"), text


def _algorithm_problems(spec: AlgorithmConfig) -> Iterator[tuple[str, str]]:
    """An unknown algorithm, or options its ``Options`` model rejects (the trainer builds it after the model)."""
    import difflib

    from visalign.algorithms import registered_algorithms

    registry = registered_algorithms()
    if spec.name not in registry:
        close = difflib.get_close_matches(spec.name, registry, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        yield "algorithm.name", f"unknown algorithm '{spec.name}'{hint}; known: {', '.join(sorted(registry))}"
        return
    options = registry[spec.name].Options
    try:
        options.model_validate(spec.options)
    except ValidationError as err:
        yield explain(options, err, prefix="algorithm.options.")


def _prompt_file_problems(key: str, source: str) -> Iterator[tuple[str, str]]:
    """A prompt file that is not UTF-8 text. A missing one is not a problem of the config (a recipe may name data
    that is downloaded later); the trainer reports it, and checks every line, when it reads the file."""
    path = Path(source)
    if source in ("train", "test", "iid") or not path.is_file():  # the shipped ShapesWorld splits
        return
    if path.suffix.lower() == ".parquet":  # a binary question set: vqa_data checks it when it reads it
        return
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        yield key, f"{path}: not a UTF-8 text file"
    except OSError as err:
        yield key, f"{path}: cannot read prompt file ({err.strerror or err})"


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    return load_config(Config, path, overrides)


__all__ = ["Config", "dump_config", "load_train_config"]
