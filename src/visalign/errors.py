"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a config key, a prompt file, a checkpoint folder,
an image). The CLI prints its message on one line and exits non-zero without a traceback. Bugs in
visalign itself stay ordinary exceptions so that they keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; the message must name the file / key / line at fault."""

    exit_code = 2


def where(path: object, line: int | None = None, key: str | None = None) -> str:
    """Format a location prefix such as ``prompts.jsonl:12`` or ``recipe.yaml [train.lr]``."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if key is not None:
        text += f" [{key}]"
    return text
