"""Every script of ``benchmarks/`` answers ``--help`` quickly, without loading a model or touching the network, and
every script of ``benchmarks/`` and ``experiments/`` is listed in its folder's README."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_scripts import BENCHMARKS, EXPERIMENTS

SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))  # _name.py: a shared helper


def _first_docstring_line(path: Path) -> str:
    return (ast.get_docstring(ast.parse(path.read_text())) or "").splitlines()[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_help_exits_0_and_describes_the_script(script: Path) -> None:
    # a bounded subprocess: a script that starts its work before parsing its arguments would hang here, not pass
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=BENCHMARKS.parent)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: ")
    # argparse wraps the description: compare words, not lines
    assert " ".join(_first_docstring_line(script).split()) in " ".join(run.stdout.split())


@pytest.mark.parametrize("folder", [BENCHMARKS, EXPERIMENTS], ids=["benchmarks", "experiments"])
def test_readme_lists_every_script_and_no_other(folder: Path) -> None:
    readme = (folder / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+\.py)`", readme, flags=re.M))
    assert listed == {p.name for p in folder.glob("*.py") if not p.name.startswith("_")}
