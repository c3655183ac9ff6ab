"""The rollout engines, one per kind of output: what samples a family's rollouts for the trainer.

An engine is built once per run from the generator, the config and the algorithm, and gives the trainer
``context()`` (the ``RunContext`` fields it adds: e.g. the schedule and kernels), ``rollout(iteration, algorithm,
items, prompt_ids, seeds)`` (one iteration's rollout; the result has ``outputs`` for the rewards, ``device``,
``group_ids``, ``prompts``, ``metadata``) and ``evaluate(cfg, items, out_dir, rewards)`` (the held-out evaluation).

* ``image`` (flow and diffusion generators, and any family whose adapter samples with step kernels):
  ``rollout.ImageRollouts``;
* ``text`` (token policies: language and vision-language models): ``token_rollout.TokenRollouts``.

Engines are imported lazily: each pulls in its own sampler.
"""

from __future__ import annotations

import importlib
from typing import Any

ENGINES = {"image": "visalign.rollout:ImageRollouts", "text": "visalign.token_rollout:TokenRollouts"}


def build_rollout_engine(generator: Any, cfg: Any, algorithm: Any) -> Any:
    """The engine of ``generator.output_kind``."""
    kind = generator.output_kind
    if kind not in ENGINES:
        raise ValueError(f"no rollout engine for '{kind}' outputs (known: {', '.join(ENGINES)})")
    module, name = ENGINES[kind].split(":")
    return getattr(importlib.import_module(module), name)(generator, cfg, algorithm)
