"""Argument types shared by the subcommands: a bad value is rejected while the command line is parsed.

argparse turns the ``ArgumentTypeError`` of a type function into a message that names the flag, which
``OneLineParser`` prints on one line (``error: visalign sample: argument --steps: must be an integer >= 1, got '0'``)
before it exits with status 2, before any model is loaded. ``float("nan")`` and ``float("inf")`` parse as floats,
so every float flag goes through ``finite_float``: a NaN guidance scale or learning rate would otherwise run to
the end and write garbage.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from visalign.errors import one_line


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line on stderr, like every user mistake (argparse would print the whole usage first):
    ``error: visalign sample: argument --steps: must be an integer >= 1, got '0' (see visalign sample --help)``.
    Subparsers made with ``add_subparsers`` inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer type that rejects values below ``low``."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{low}"  # argparse names the type in some messages
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A finite float in [0, 1)."""
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, got {text!r}")
    return value


def output_folder(text: str) -> Path:
    """A folder to write into: it may exist (as a folder) or not yet; an existing file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    _check_parents(path, text)
    return path


def _check_parents(path: Path, text: str) -> None:
    """Refuse a path below an existing file (``mkdir`` would fail half-way with a traceback)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            return


def output_file(text: str) -> Path:
    """A file to write: an existing folder of that name is refused."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    _check_parents(path, text)
    return path
