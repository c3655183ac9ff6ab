"""Load a script of ``benchmarks/`` or ``experiments/`` as a module, so that tests can call its functions.

Neither folder is a package (the scripts are run by path), so a script is loaded from its file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
EXPERIMENTS = ROOT / "experiments"


def _load(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module."""
    return _load(BENCHMARKS / f"{name}.py")


def load_experiment(name: str) -> ModuleType:
    """``experiments/NAME.py`` as a module."""
    return _load(EXPERIMENTS / f"{name}.py")
