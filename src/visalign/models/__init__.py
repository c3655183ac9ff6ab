"""Generator adapters, one per family (one registry line each); ``build_generator`` wraps a pipeline."""

from __future__ import annotations

from typing import Any

from visalign.models.base import Cond, FinetuneSpec, Generator, Schedule


def _families() -> dict[str, type[Generator]]:
    from visalign.models.diffusion import DiffusionGenerator
    from visalign.models.flow import FlowGenerator

    return {"flow": FlowGenerator, "diffusion": DiffusionGenerator}


def build_generator(family: str, pipeline: Any, **kwargs: Any) -> Generator:
    families = _families()
    if family not in families:
        raise ValueError(f"no generator adapter for family '{family}' (known: {', '.join(families)})")
    return families[family](pipeline, **kwargs)


__all__ = ["Cond", "FinetuneSpec", "Generator", "Schedule", "build_generator"]

