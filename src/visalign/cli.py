"""The ``visalign`` command line.

Subcommands live in ``visalign.commands.<module>`` and are imported lazily. A ``UserError`` (bad config,
bad prompt file, missing checkpoint...) is printed on one line and exits with status 2, no traceback. A
``RewardError`` (a reward that could not be computed: a remote server that stopped answering, a reward that returned
NaN) is printed the same way with status 1: the run failed, though not because of what the user typed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from visalign import __version__
from visalign.commands import SUBCOMMANDS
from visalign.commands._args import OneLineParser
from visalign.errors import UserError, one_line


def _available() -> dict[str, str]:
    """subcommand -> module name, for modules that exist in this install."""
    found = {}
    for module, (name, _help) in SUBCOMMANDS.items():
        if importlib.util.find_spec(f"visalign.commands.{module}") is not None:
            found[name] = module
    return found


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="visalign", description="RL post-training for visual generators.")
    parser.add_argument("--version", action="version", version=f"visalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available().items():
        help_text = SUBCOMMANDS[module][1]
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:  # import only the module that will run
            importlib.import_module(f"visalign.commands.{module}").add_arguments(sp)
    return parser


class _NoTorchvisionNotice(logging.Filter):
    """Drops transformers' notice that an image processor falls back to PIL because torchvision is absent.

    Importing diffusers' SD3 pipeline triggers it on every command; visalign never uses torchvision (its image
    preprocessing is its own, see ``rewards/_images.py``), so the notice only alarms users.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def _is_reward_error(err: BaseException) -> bool:
    """Whether ``err`` is a ``RewardError``, without importing the reward stack (torch) for commands that never
    loaded it."""
    base = sys.modules.get("visalign.rewards.base")
    return base is not None and isinstance(err, base.RewardError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
    command = next((a for a in argv if not a.startswith("-")), None)
    available = _available()
    parser = build_parser(only=command if command in available else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    module = importlib.import_module(f"visalign.commands.{available[args.command]}")
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        if not _is_reward_error(err):
            raise  # a defect in visalign keeps its traceback
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
