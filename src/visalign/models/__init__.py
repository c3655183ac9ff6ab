"""Generator adapters, one per family, and their registry; ``build_generator`` wraps a pipeline.

A new family is one adapter file (a ``Generator`` subclass implementing the contract of ``models/base.py``) and one
registry line: in ``_builtin_families`` for a shipped family, or ``register_family(name, cls)`` from outside the
package. No algorithm changes: algorithms reach the family only through the adapter.
"""

from __future__ import annotations

from typing import Any

from visalign.models.base import Cond, FinetuneSpec, Generator, Schedule

_REGISTERED: dict[str, type[Generator]] = {}


def _builtin_families() -> dict[str, type[Generator]]:
    # imported lazily: each adapter pulls in its diffusers pipeline classes
    from visalign.models.diffusion import DiffusionGenerator
    from visalign.models.flow import FlowGenerator
    from visalign.models.token_policy import TokenPolicy
    from visalign.models.vlm import VLMPolicy

    return {"flow": FlowGenerator, "diffusion": DiffusionGenerator, "lm": TokenPolicy, "vlm": VLMPolicy}


def register_family(name: str, adapter: type[Generator]) -> None:
    """Make ``build_generator(name, ...)`` wrap pipelines with ``adapter``."""
    if name in _builtin_families() or name in _REGISTERED:
        raise ValueError(f"generator family '{name}' registered twice")
    _REGISTERED[name] = adapter


def families() -> dict[str, type[Generator]]:
    """Every known family and its adapter class."""
    return {**_builtin_families(), **_REGISTERED}


def build_generator(family: str, pipeline: Any, **kwargs: Any) -> Generator:
    known = families()
    if family not in known:
        raise ValueError(f"no generator adapter for family '{family}' (known: {', '.join(known)})")
    return known[family](pipeline, **kwargs)


__all__ = ["Cond", "FinetuneSpec", "Generator", "Schedule", "build_generator", "families", "register_family"]
