"""``visalign report RUN_DIR``: (re)build the run's self-contained HTML report."""

from __future__ import annotations

import argparse

from visalign.commands._args import output_file

NAME = "report"
HELP = "build the HTML report of a run directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory")
    parser.add_argument("--out", type=output_file, help="output file (default: RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    from visalign.report.html import build_report

    path = build_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0
