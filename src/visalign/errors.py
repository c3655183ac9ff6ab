"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a config key, a prompt file, a checkpoint folder,
an image). The CLI prints its message on one line and exits non-zero without a traceback. Bugs in
visalign itself stay ordinary exceptions so that they keep their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An error caused by user input; the message must name the file / key / line at fault."""

    exit_code = 2


def one_line(message: object, limit: int = 600) -> str:
    """``message`` on a single line (newlines and runs of spaces collapsed), cut at ``limit`` characters.

    Messages that wrap a library's error (pydantic, diffusers, torch) can span lines or list every parameter of a
    model; the CLI promises one line, so the location (which comes first) always survives the cut.
    """
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 4].rstrip() + " ..."


def where(path: object, line: int | None = None, key: str | None = None) -> str:
    """Format a location prefix such as ``prompts.jsonl:12`` or ``recipe.yaml [train.lr]``."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if key is not None:
        text += f" [{key}]"
    return text


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a script's ``main``; a ``UserError`` becomes one line on stderr and its exit code, as in the CLI."""
    try:
        main()
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
