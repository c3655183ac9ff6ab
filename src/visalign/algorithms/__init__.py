"""Algorithms: one file each, registered by name (``build_algorithm``); the contract lives in ``base``."""

from visalign.algorithms.base import Algorithm, build_algorithm, register_algorithm, registered_algorithms

__all__ = ["Algorithm", "build_algorithm", "register_algorithm", "registered_algorithms"]
