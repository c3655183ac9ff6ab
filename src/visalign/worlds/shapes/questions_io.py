"""Reading, checking and writing QA files (the schema is documented in ``questions.py``).

Every problem of a hand-written or edited file is a ``UserError`` naming ``file:line`` and the field, so that a
malformed item fails when the file is loaded, not as a wrong reward in the middle of a run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from visalign.errors import UserError
from visalign.jsonl import read_checked
from visalign.worlds.shapes.metadata import validate_metadata
from visalign.worlds.shapes.questions_phrasings import QUESTION_TYPES
from visalign.worlds.shapes.vocab import COLORS, SHAPES

MIN_SIZE = 32  # the world's smallest image size (``visalign world render --size``)
_INT = re.compile(r"^(0|[1-9][0-9]*)$")


def _fail(where: str, message: str) -> None:
    raise UserError(f"{where}: {message}")


def question_text(item: dict[str, Any]) -> str:
    """The text part of the item's user message."""
    return next(part["text"] for part in item["messages"][0]["content"] if part.get("type") == "text")


def _check_messages(messages: Any, where: str) -> None:
    ok = isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)
    ok = ok and messages[0].get("role") == "user" and isinstance(messages[0].get("content"), list)
    if not ok:
        _fail(where, "'messages' must be a list holding one user message with a 'content' list")
    parts = messages[0]["content"]
    kinds = [p.get("type") if isinstance(p, dict) else None for p in parts]
    if sorted(kinds) != ["image", "text"]:
        _fail(where, f"the user message must hold one image part and one text part, got parts {kinds}")
    text = next(p for p in parts if p.get("type") == "text").get("text")
    if not isinstance(text, str) or not text.strip():
        _fail(where, "the text part of the user message is missing or empty")


def _check_image(image: Any, where: str) -> None:
    if not isinstance(image, dict) or set(image) != {"metadata", "seed", "size"}:
        _fail(where, f"'image' must be {{'metadata', 'seed', 'size'}}, got {image!r:.120}")
    seed, size = image["seed"], image["size"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        _fail(where, f"image seed must be an integer >= 0, got {seed!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
        _fail(where, f"image size must be an integer >= {MIN_SIZE}, got {size!r}")
    validate_metadata(image["metadata"], f"{where} [image.metadata]")


def _check_box(box: Any, size: int, where: str) -> None:
    numbers = isinstance(box, list) and len(box) == 4
    numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    if not numbers or not (0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size):
        _fail(where, f"'box' must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size}, "
                     f"got {box!r}")  # fmt: skip


def _check_answer(kind: str, answer: str, where: str) -> None:
    allowed = {
        "count": _INT.match(answer) is not None,
        "color": answer in COLORS,
        "shape": answer in SHAPES,
        "relation_yesno": answer in ("yes", "no"),
        "relation_which": answer in SHAPES,
        "text": answer.isdigit(),
        "grounding": True,  # checked against 'box'
    }
    if not allowed[kind]:
        _fail(where, f"answer {answer!r} is no {kind} answer")


def validate_item(item: Any, where: str) -> None:
    """Raise ``UserError`` (prefixed by ``where``, e.g. ``qa_test.jsonl:3``) unless ``item`` is a valid QA item."""
    if not isinstance(item, dict):
        _fail(where, f"an item must be a JSON object, got {type(item).__name__}")
    missing = [k for k in ("messages", "type", "answer", "image") if k not in item]
    if missing:
        _fail(where, f"missing key(s) {missing}")
    if item["type"] not in QUESTION_TYPES:
        _fail(where, f"unknown question type {item['type']!r}; known: {', '.join(QUESTION_TYPES)}")
    if not isinstance(item["answer"], str) or not item["answer"].strip():
        _fail(where, f"'answer' must be a non-empty string, got {item['answer']!r}")
    _check_messages(item["messages"], where)
    _check_image(item["image"], where)
    _check_answer(item["type"], item["answer"], where)
    if item["type"] == "grounding":
        if "box" not in item:
            _fail(where, "a grounding item needs 'box': [x0, y0, x1, y1]")
        _check_box(item["box"], item["image"]["size"], where)
    elif "box" in item:
        _fail(where, f"'box' belongs to grounding items only, not to a {item['type']!r} item")


def load_qa_file(path: str | Path) -> list[dict[str, Any]]:
    """The items of a QA JSONL file (blank lines skipped), every line checked."""
    return read_checked(path, validate_item, "questions")


def write_qa_file(path: str | Path, items: list[dict[str, Any]]) -> Path:
    """Write items as JSONL, one compact object per line (the shipped files' format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(item, separators=(",", ":")) + "\n" for item in items), encoding="utf-8"
    )
    return path
