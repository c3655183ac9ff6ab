"""The ``composite`` reward: a weighted sum of other rewards, each of whose scores is also logged.

``{"composite": sum_k w_k r_k, <every key of every component>...}``: the total first, then each component's
scores, so each is logged separately. Differentiable if every component is; groupwise if any component is.
To normalise each reward within its group before the weighted sum instead (GDPO), keep the rewards separate
and use the advantage mode ``gdpo`` (``visalign.advantages``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from visalign.errors import UserError
from visalign.rewards.base import Reward, RewardError, build_reward, register_reward, reward_option_problems


def _spec(item: Any) -> tuple[str, str, dict[str, Any], float]:
    """(result-key prefix, reward name, kwargs, weight) from ``"name"`` or ``{"name":..., "weight":..., ...}``."""
    if isinstance(item, str):
        return item, item, {}, 1.0
    if isinstance(item, Mapping) and "name" in item:
        kwargs = dict(item.get("kwargs", {}))
        return str(item.get("key", item["name"])), str(item["name"]), kwargs, float(item.get("weight", 1.0))
    raise UserError(f"reward 'composite': component {item!r} must be a name or {{name, weight, kwargs}}")


@register_reward("composite")
class CompositeReward(Reward):
    """Weighted sum of registered rewards; ``components``: names or ``{name, weight, kwargs, key}`` dicts.

    ``weights`` (optional) overrides per name: ``weights={"pickscore": 1/26}``. Components may also be
    given as already-built ``Reward`` objects via ``rewards=[(reward, weight), ...]``.
    """

    name = "composite"
    summary = "weighted sum of other rewards; components logged"
    differentiable = False
    groupwise = False
    output_range = (float("-inf"), float("inf"))

    def __init__(
        self,
        components: Sequence[Any] = (),
        weights: Mapping[str, float] | None = None,
        rewards: Sequence[tuple[Reward, float]] = (),
    ) -> None:
        self.parts: list[tuple[str, Reward, float]] = [(r.name, r, float(w)) for r, w in rewards]
        for item in components:
            key, name, kwargs, weight = _spec(item)
            if name == "composite":
                raise UserError("reward 'composite': a composite cannot contain a composite")
            self.parts.append((key, build_reward(name, **kwargs), weight))
        if not self.parts:
            raise UserError("reward 'composite': no components given (components=[...])")
        keys = [k for k, _r, _w in self.parts]
        if len(set(keys)) != len(keys):
            raise UserError(f"reward 'composite': duplicate component keys {keys}; give each a distinct 'key'")
        if weights:
            unknown = set(weights) - set(keys)
            if unknown:
                raise UserError(f"reward 'composite': weights for unknown components {sorted(unknown)}")
            self.parts = [(k, r, float(weights.get(k, w))) for k, r, w in self.parts]
        self.differentiable = all(r.differentiable for _k, r, _w in self.parts)  # type: ignore[misc]
        self.groupwise = any(r.groupwise for _k, r, _w in self.parts)  # type: ignore[misc]
        needed = [k for _k, r, _w in self.parts for k in getattr(r, "needs_metadata", ())]
        self.needs_metadata = tuple(dict.fromkeys(needed))  # what any component reads

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """The problems of each component's own name and ``kwargs``, keyed ``components.I[.kwargs.KEY]``, so a
        recipe's typo inside a composite is found when the recipe loads."""
        components = options.get("components", ())
        if isinstance(components, (str, Mapping)) or not isinstance(components, Sequence):
            return
        for i, item in enumerate(components):
            try:
                _key, name, kwargs, _weight = _spec(item)
            except (UserError, TypeError, ValueError):
                yield f"components.{i}", f"reward 'composite': component {item!r} must be a name or {{name, weight, kwargs}}"
                continue
            for key, text in reward_option_problems(name, kwargs):
                yield (f"components.{i}.kwargs.{key}" if key else f"components.{i}.name"), f"reward 'composite': {text}"

    @property
    def weights(self) -> dict[str, float]:
        return {k: w for k, _r, w in self.parts}

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        total: torch.Tensor | None = None
        logged: dict[str, torch.Tensor] = {}
        for key, reward, weight in self.parts:
            scores = reward(images, prompts, metadata)
            main = next(iter(scores.values()))
            total = weight * main if total is None else total + weight * main
            for sub, value in scores.items():
                name = key if sub == reward.name else (sub if key == reward.name else f"{key}/{sub}")
                if name in logged or name == self.name:
                    name = f"{key}/{sub}"
                if name in logged:
                    raise RewardError(f"reward 'composite': two components both return '{name}'")
                logged[name] = value
        assert total is not None
        return {self.name: total, **logged}
