"""JSON-lines files: one JSON object per line.

* ``read_jsonl``: files that users write (prompt files, preference data); every problem is a ``UserError`` that
  names the file and the line, never a traceback.
* ``read_log`` / ``append_jsonl`` / ``truncate_jsonl``: the logs a run appends to (``metrics.jsonl``,
  ``eval.jsonl``). A kill or a full disk can leave the last line torn; readers drop it (that step never
  finished, and a resumed run logs it again) and a resume truncates a log to the step it restarts from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from visalign.errors import UserError


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    yield from _objects(path, text.splitlines(), "malformed JSON", torn_tail=False)


def read_checked(path: str | Path, check: Callable[[dict[str, Any], str], None], what: str) -> list[dict[str, Any]]:
    """Every object of a user-written JSONL file, each passed to ``check(row, "FILE:LINE")`` (which raises a
    ``UserError`` naming that place); a file with none is an error too (``what``: "prompts", "questions"...)."""
    path = Path(path)
    rows = []
    for lineno, row in read_jsonl(path):
        check(row, f"{path}:{lineno}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no {what} in file")
    return rows


def read_log(path: str | Path, what: str = "line") -> list[dict[str, Any]]:
    """The rows of a run's log (none if there is no file yet), a torn last line dropped. Any other line that is not
    a JSON object is a ``UserError`` naming the file, the line and ``what`` a line is (``malformed metrics line``)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    rows = _objects(path, text.split("\n"), f"malformed {what}", torn_tail=not text.endswith("\n"))
    return [row for _, row in rows]


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one line."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows``, one a line."""
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))


def truncate_jsonl(path: str | Path, key: str, last: int, what: str = "line") -> None:
    """Drop the rows of a log with ``row[key] > last`` (a row without ``key`` counts as 0) and a torn last line:
    what a run logged after the checkpoint it resumes from. Nothing is written where there is no log."""
    path = Path(path)
    if path.is_file():
        write_jsonl(path, [row for row in read_log(path, what) if _counter(row, key, path, what) <= last])


def _counter(row: dict[str, Any], key: str, path: Path, what: str) -> int:
    value = row.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: a {what} has a non-numeric {key} ({value!r})")
    return int(value)


def _objects(path: Path, lines: list[str], malformed: str, torn_tail: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for the non-blank ``lines`` of ``path``; with ``torn_tail`` an unreadable last line
    ends the rows instead of raising."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail and lineno == len(lines):
                return
            raise UserError(f"{path}:{lineno}: {malformed} ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row
