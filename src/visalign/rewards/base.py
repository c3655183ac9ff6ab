"""The reward contract: what a reward is given and returns, its flags, its options and its checks.

A reward sees only images, prompts and metadata:

    reward(images, prompts, metadata) -> {name: tensor[B]}

* ``images``: float tensor ``[B, 3, H, W]`` in ``[0, 1]`` (for a differentiable reward, gradients flow
  through it; otherwise it is detached by the caller).
* ``prompts``: ``list[str]`` of length B.
* ``metadata``: ``list[dict]`` of length B (GenEval-style metadata for ShapesWorld prompts, ``{}`` otherwise).
* the result maps one or more score names to float tensors of shape ``[B]``. The first key is the
  reward's main score; extra keys are logged components (e.g. per-tag scores).

A ``TextReward`` scores the answers of a token policy (a vision-language model) the same way: its first argument
is the ``list[str]`` of sampled answers instead of images (``output_kind = "text"``).

Flags: ``differentiable`` (scores can be back-propagated to the images), ``groupwise`` (scores depend on
the whole group, e.g. a pairwise win rate: then the caller passes one group at a time).
A reward that returns NaN/inf or the wrong shape raises ``RewardError`` naming the reward
(``check_scores``); nothing is ever silently zeroed.

Options (a recipe's ``rewards: [{name, options}]``, ``serve-reward NAME key=value``) are the constructor's
keyword arguments: ``check_reward_options`` matches them against its signature (names, required ones, annotated
types, finite floats) before anything is built, so a typo is one line naming the reward and the option, not a
``TypeError`` deep inside. ``needs_metadata`` names the metadata keys a reward reads from every prompt
(the ShapesWorld verifier needs GenEval-style metadata); ``check_metadata`` checks a prompt list against it.
"""

from __future__ import annotations

import difflib
import inspect
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch

from visalign.errors import UserError


class RewardError(RuntimeError):
    """A reward produced invalid output or could not be computed."""


class Reward:
    """Base class of every reward. Subclasses implement ``score`` and set the class flags."""

    name: ClassVar[str] = "reward"
    differentiable: ClassVar[bool] = False
    groupwise: ClassVar[bool] = False
    output_range: ClassVar[tuple[float, float]] = (float("-inf"), float("inf"))
    summary: ClassVar[str] = ""  # one line for `visalign rewards list` (what it scores, the paper)
    needs_metadata: tuple[str, ...] = ()  # metadata keys every prompt must carry (``check_metadata``)
    output_kind: ClassVar[str] = "image"  # what it scores: "image" (generators) or "text" (token policies)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, torch.Tensor]:
        if metadata is None:
            metadata = [{} for _ in prompts]
        if images.ndim != 4 or images.shape[1] != 3:
            raise RewardError(f"reward '{self.name}': expected images [B, 3, H, W], got {tuple(images.shape)}")
        if not (len(prompts) == len(metadata) == images.shape[0]):
            raise RewardError(
                f"reward '{self.name}': {images.shape[0]} images, {len(prompts)} prompts, {len(metadata)} metadata"
            )
        scores = self.score(images, prompts, metadata)
        check_scores(self.name, scores, images.shape[0])
        return scores


class TextReward(Reward):
    """Base class of the rewards of answers: ``reward(outputs, prompts, metadata)`` with ``outputs`` the sampled
    answer texts (``list[str]``, one per prompt)."""

    output_kind: ClassVar[str] = "text"

    def score(  # type: ignore[override]
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(  # type: ignore[override]
        self, outputs: Sequence[str], prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, torch.Tensor]:
        if metadata is None:
            metadata = [{} for _ in prompts]
        if isinstance(outputs, str) or not all(isinstance(o, str) for o in outputs):
            raise RewardError(f"reward '{self.name}': expected a list of answer strings")
        if not (len(prompts) == len(metadata) == len(outputs)):
            raise RewardError(
                f"reward '{self.name}': {len(outputs)} answers, {len(prompts)} prompts, {len(metadata)} metadata"
            )
        scores = self.score(list(outputs), prompts, metadata)
        check_scores(self.name, scores, len(outputs))
        return scores


def check_scores(name: str, scores: Any, batch: int) -> None:
    """Raise ``RewardError`` naming the reward if ``scores`` is not ``{str: finite float tensor[batch]}``."""
    if not isinstance(scores, dict) or not scores:
        raise RewardError(f"reward '{name}' must return a non-empty dict of tensors, got {type(scores).__name__}")
    for key, value in scores.items():
        if not isinstance(value, torch.Tensor):
            raise RewardError(f"reward '{name}' score '{key}' is a {type(value).__name__}, not a tensor")
        if value.shape != (batch,):
            raise RewardError(f"reward '{name}' score '{key}' has shape {tuple(value.shape)}, expected ({batch},)")
        if not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).nonzero().flatten().tolist()
            shown = f"{bad}" if len(bad) <= 8 else f"{bad[:8]} and {len(bad) - 8} more"  # a batch can be large
            raise RewardError(f"reward '{name}' score '{key}' is NaN/inf at batch positions {shown}")


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Class decorator: make a reward constructible by name from configs and the CLI."""

    def wrap(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REGISTRY:
            raise ValueError(f"reward '{name}' registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered_rewards() -> dict[str, Callable[..., Reward]]:
    from visalign.rewards import _load_builtin  # noqa: F401  (registers the built-in rewards)

    return dict(_REGISTRY)


def _unknown_reward(name: str, registry: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, registry, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown reward '{name}'{hint}; known: {', '.join(sorted(registry))}"


def reward_parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """(keyword parameters of a reward's constructor, whether it also takes keywords it does not name).

    A constructor that passes ``**kwargs`` on to its parent's (``VLMPairwise``) contributes its own names and then
    the parent's, so the options of the whole chain are known.
    """
    if inspect.isclass(factory):
        functions = [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__]
    else:
        functions = [factory]
    params: dict[str, inspect.Parameter] = {}
    for function in functions:
        if function is object.__init__:
            return params, False
        open_ended = False
        for i, param in enumerate(inspect.signature(function).parameters.values()):
            if param.kind is param.VAR_KEYWORD:
                open_ended = True
            elif param.kind is not param.VAR_POSITIONAL and not (i == 0 and inspect.isclass(factory)):
                params.setdefault(param.name, param)
        if not open_ended:
            return params, False
    return params, True


def _resolved_annotation(function_module: str, annotation: Any) -> Any:
    """The annotation as a type (annotations are strings under ``from __future__ import annotations``); None when
    it names something only imported for type checking."""
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(function_module)
    try:
        return eval(annotation, dict(vars(module)) if module else {})  # noqa: S307 - the module's own annotation
    except Exception:  # noqa: BLE001 - an unresolvable hint is only not checked
        return None


def _type_problem(param: inspect.Parameter, module: str, value: Any) -> str | None:
    """Why ``value`` does not fit the parameter's annotation (None when it fits or is not checked)."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    if param.annotation is param.empty:
        return None
    hint = _resolved_annotation(module, param.annotation)
    if hint is None or hint is Any:
        return None
    try:
        adapter = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False))
    except Exception:  # noqa: BLE001 - a hint pydantic cannot check (a Protocol, a forward reference) is not checked
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as err:
        finite = any(e["type"] == "finite_number" for e in err.errors())
        wanted = "a finite number" if finite else str(param.annotation)
        return f"must be {wanted}, got {value!r}"
    return None


def _option_problems(
    name: str, factory: Callable[..., Any], options: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    params, open_ended = reward_parameters(factory)
    listed = ", ".join(params) or "none"
    for key, value in options.items():
        if key not in params:
            if open_ended:
                continue
            close = difflib.get_close_matches(str(key), params, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            yield str(key), f"reward '{name}' has no option '{key}'{hint} (options: {listed})"
            continue
        problem = _type_problem(params[key], getattr(factory, "__module__", ""), value)
        if problem is None and isinstance(value, float) and not math.isfinite(value):
            problem = f"must be a finite number, got {value!r}"
        if problem is not None:
            yield str(key), f"reward '{name}' option '{key}' {problem}"
    for key, param in params.items():
        if param.default is param.empty and key not in options:
            yield key, f"reward '{name}' needs option '{key}'"


def reward_option_problems(name: str, options: Mapping[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """``(option, message)`` for each problem of building reward ``name`` with ``options`` (``''``: the name).

    A reward whose options hold other rewards' options (``composite``) checks those too, through its
    ``option_problems`` class method.
    """
    registry = registered_rewards()
    if name not in registry:
        yield "", _unknown_reward(name, registry)
        return
    factory = registry[name]
    options = dict(options or {})
    yield from _option_problems(name, factory, options)
    nested = getattr(factory, "option_problems", None)
    if nested is not None:
        yield from nested(options)


def check_reward_options(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Raise a ``UserError`` for the first problem that ``reward_option_problems`` finds."""
    problem = next(iter(reward_option_problems(name, options)), None)
    if problem is not None:
        raise UserError(problem[1])


def build_reward(name: str, **kwargs: Any) -> Reward:
    """The registered reward ``name`` built with ``kwargs``, checked first (``check_reward_options``).

    A constructor that rejects a value itself (``ValueError``, ``TypeError``, ``RewardError``) becomes a
    ``UserError`` naming the reward: the value came from the user's options.
    """
    check_reward_options(name, kwargs)
    try:
        return registered_rewards()[name](**kwargs)
    except UserError:
        raise
    except (ValueError, TypeError, RewardError) as err:
        text = str(err)
        named = text if text.startswith(f"reward '{name}'") else f"reward '{name}': {text}"
        raise UserError(named) from None


def check_metadata(
    rewards: Sequence[Reward | tuple[Reward, float]], items: Sequence[Mapping[str, Any]], source: object
) -> None:
    """Raise a ``UserError`` naming ``source`` (the prompt file), the first prompt and the reward when a prompt
    lacks metadata that a reward reads (``Reward.needs_metadata``), before any image is generated."""
    for entry in rewards:
        reward = entry[0] if isinstance(entry, tuple) else entry
        needed = tuple(getattr(reward, "needs_metadata", ()) or ())
        for index, item in enumerate(items if needed else ()):
            missing = [key for key in needed if key not in item]
            if missing:
                name = getattr(reward, "name", type(reward).__name__)
                raise UserError(
                    f"{source}: prompt {index + 1} ({str(item.get('prompt', ''))[:60]!r}) has no "
                    f"{', '.join(repr(k) for k in missing)} metadata, which reward '{name}' needs "
                    "(use a ShapesWorld prompt file in GenEval metadata JSONL, e.g. from `visalign world prompts`)"
                )
