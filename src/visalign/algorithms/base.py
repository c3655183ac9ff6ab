"""The algorithm contract and registry.

An algorithm is one file: a subclass of ``Algorithm`` registered with ``@register_algorithm("name")``. It declares

* ``needs``: what it needs from a rollout — ``"likelihood"`` (per-step trajectories with old log-probs),
  ``"final"`` (final samples only), ``"pairs"`` (best/worst pairs per group), ``"differentiable"`` (a reward that
  back-propagates), ``"tokens"`` (a token policy's answers with per-token log-probs);
* ``families``: the generator families it is limited to (``flow``, ``diffusion``), or None (the default) for every
  family whose adapter implements the ``Generator`` contract;
* ``Options``: a ``StrictModel`` with its hyperparameters (the config's ``algorithm.options``);
* ``advantage_defaults``: the config's ``advantage`` settings its paper's code uses, applied where the config does
  not set them (e.g. DanceGRPO's Bessel-corrected group std);

and implements ``loss(batch, generator) -> (loss, metrics)``. The trainer owns the loop; an algorithm may override
``micro_batches`` (how a minibatch of samples is cut into backward passes: by default one ``StepBatch`` per stored
step for ``likelihood`` algorithms, one ``SampleBatch`` of final samples otherwise), ``on_iteration_start``,
``rollout_plan`` (per-iteration rollout settings: SDE / train windows, shared initial noise, stored step means),
``rollout_weights`` (the weights rollouts are drawn with, e.g. DiffusionNFT's old policy), ``on_optimizer_step``,
``state_dict`` / ``load_state_dict`` (state that must survive a resume, e.g. an EMA of the old policy).
``bind`` hands it the run's ``RunContext`` (rewards, schedule, kernels, seed, ranks) once, before training.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from visalign.config_io import StrictModel, validate_config
from visalign.errors import UserError

if TYPE_CHECKING:
    from visalign.models.base import Generator, Schedule
    from visalign.rewards.base import Reward
    from visalign.rollout import Rollout, RolloutPlan, SampleBatch, StepBatch
    from visalign.sampling import Kernel

NEEDS = frozenset({"likelihood", "final", "pairs", "differentiable", "tokens"})


@dataclass(frozen=True)
class RunContext:
    """What the trainer tells an algorithm about the run, once, before training (``Algorithm.bind``)."""

    rewards: Sequence[tuple[Reward, float]] = ()  # (reward, weight) pairs, in the config's order
    schedule: Schedule | None = None  # the rollout's sampling schedule
    kernel: Kernel | None = None  # the rollout's (stochastic) step kernel
    deterministic_kernel: Kernel | None = None  # the family's deterministic kernel on the same schedule
    seed: int = 0  # the run's seed
    rank: int = 0  # this process, of ``world``
    world: int = 1
    samples_per_iter: int = 0  # prompts_per_iter x group_size over all processes
    max_new_tokens: int = 0  # token policies: the answers' length budget (0: not a token policy)


class Algorithm:
    approach: ClassVar[str] = ""  # how the reward reaches the model (docs/algorithms.md): the family of updates
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    families: ClassVar[tuple[str, ...] | None] = None
    # Kernels the rollout may use with this algorithm (None: any).
    kernels: ClassVar[tuple[str, ...] | None] = None
    # ``advantage`` keys whose default this algorithm's reference code overrides (a config that sets a key wins)
    advantage_defaults: ClassVar[dict[str, Any]] = {}

    class Options(StrictModel):
        pass

    def __init__(self, options: StrictModel) -> None:
        self.options = options
        self.context = RunContext()

    @classmethod
    def supports_family(cls, family: str) -> bool:
        """Whether the algorithm runs on generators of ``family``."""
        return cls.families is None or family in cls.families

    @classmethod
    def advantage_settings(cls, configured: Any) -> Any:
        """The run's ``AdvantageConfig``: ``configured`` with ``advantage_defaults`` where it left a key unset."""
        unset = {k: v for k, v in cls.advantage_defaults.items() if k not in configured.model_fields_set}
        return configured.model_copy(update=unset) if unset else configured

    def bind(self, context: RunContext) -> None:
        """Called once by the trainer, before training, with the run's context."""
        self.context = context

    def on_iteration_start(self, iteration: int) -> None:
        """Hook for schedules that move with the iteration (e.g. a sliding SDE window)."""

    def on_optimizer_step(self) -> None:
        """Called after every optimizer step (e.g. to count them for a decay schedule)."""

    def rollout_weights(self, generator: Generator) -> contextlib.AbstractContextManager[None]:
        """The weights the rollout samples with: the policy's (the default), or e.g. an old policy swapped in."""
        return contextlib.nullcontext()

    def rollout_plan(self, iteration: int, plan: RolloutPlan) -> RolloutPlan:
        """The rollout settings of an iteration: the config's ``plan`` (returned as is by default), with what this
        algorithm sets, e.g. ``replace(plan, sde_window=(l, l + w), train_window=(l, l + w))`` (MixGRPO)."""
        return plan

    def micro_batches(self, rollout: Rollout, indices: torch.Tensor) -> Iterator[StepBatch | SampleBatch]:
        """Likelihood algorithms: one backward pass per stored (trained) step; others: the final samples."""
        if "likelihood" in self.needs:
            for k in range(rollout.num_trained_steps):
                yield rollout.step_batch(indices, k)
        else:
            yield rollout.sample_batch(indices)

    def offline_batch(self, iteration: int, generator: Generator) -> Any | None:
        """Offline algorithms: the iteration's batch from their data set (with ``len`` and ``mask``), which
        replaces rollout, reward and advantages in the trainer; None (the default): roll out."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def loss(self, batch: Any, generator: Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


_REGISTRY: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    def wrap(cls: type[Algorithm]) -> type[Algorithm]:
        if name in _REGISTRY:
            raise ValueError(f"algorithm '{name}' registered twice")
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise ValueError(f"algorithm '{name}' declares unknown needs {sorted(unknown)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_algorithms() -> dict[str, type[Algorithm]]:
    from visalign.algorithms import _load_builtin  # noqa: F401  (registers the built-in algorithms)

    return dict(_REGISTRY)


def build_algorithm(name: str, options: dict[str, Any] | None = None, source: str = "config") -> Algorithm:
    registry = registered_algorithms()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown algorithm '{name}'{hint}; known: {', '.join(sorted(registry))}")
    cls = registry[name]
    try:
        opts = validate_config(cls.Options, dict(options or {}), source)
    except UserError as err:
        raise UserError(str(err).replace("'", "'algorithm.options.", 1)) from None
    return cls(opts)
