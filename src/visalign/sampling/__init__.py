"""Step kernels with log-probs (``build_kernel(name, ...)`` makes one by name; one registry line per kernel) and
the samplers that are not rollouts (``samplers``: the differentiable and the evaluation sampler)."""

from __future__ import annotations

from typing import Any

from visalign.sampling.base import Kernel, Transition, gaussian_log_prob
from visalign.sampling.ddim import DDIM
from visalign.sampling.flow import FlowCPS, FlowDance, FlowDPMSolver2M, FlowODE, FlowSDE

KERNELS: dict[str, type[Kernel]] = {
    "ode": FlowODE,
    "sde": FlowSDE,
    "cps": FlowCPS,
    "dance": FlowDance,
    "dpm2m": FlowDPMSolver2M,
    "ddim": DDIM,
}

def build_kernel(name: str, **kwargs: Any) -> Kernel:
    if name not in KERNELS:
        from visalign.errors import UserError

        raise UserError(f"unknown sampler kernel '{name}'; known: {', '.join(KERNELS)}")
    return KERNELS[name](**kwargs)


__all__ = ["DDIM", "KERNELS", "FlowCPS", "FlowDPMSolver2M", "FlowDance", "FlowODE", "FlowSDE",
           "Kernel", "Transition", "build_kernel", "gaussian_log_prob"]
