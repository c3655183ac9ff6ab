"""Importing this module registers every built-in algorithm: one line per algorithm file."""

from visalign.algorithms import ddpo, flow_grpo  # noqa: F401
