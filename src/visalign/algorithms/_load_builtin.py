"""Importing this module registers every built-in algorithm: one line per algorithm file."""

from visalign.algorithms import (  # noqa: F401
    alignprop,
    awm,
    ddpo,
    diffusion_dpo,
    diffusion_kto,
    diffusion_nft,
    dpok,
    draft,
    flow_grpo,
    grpo,
    raft,
    refl,
    rwr,
)
