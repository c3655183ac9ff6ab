"""``visalign bench NAME [args...]``: run ``benchmarks/bench_NAME.py`` of the source tree (e.g. ``engine``)."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from visalign.errors import UserError

NAME = "bench"
HELP = "run a benchmark script"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="benchmark name (benchmarks/bench_NAME.py), e.g. engine")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")


def _find(name: str) -> Path:
    candidates = [Path.cwd() / "benchmarks", Path(__file__).resolve().parents[3] / "benchmarks"]
    for folder in candidates:
        path = folder / f"bench_{name}.py"
        if path.is_file():
            return path
    known = sorted({p.stem[6:] for f in candidates if f.is_dir() for p in f.glob("bench_*.py")})
    raise UserError(f"no benchmark '{name}' (known: {', '.join(known) or 'none found'}; run from the source tree)")


def run(args: argparse.Namespace) -> int:
    path = _find(args.name)
    argv, search = sys.argv, list(sys.path)
    sys.argv = [str(path), *args.args]
    sys.path.insert(0, str(path.parent))  # as `python benchmarks/bench_NAME.py` would: its helpers import
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv, sys.path[:] = argv, search
    return 0
