"""Validation of GenEval-style metadata for ShapesWorld prompts.

The format is GenEval's (``evaluation_metadata.jsonl``), one JSON object per prompt::

    {"tag": "position", "prompt": "a photo of a star left of a circle",
     "include": [{"class": "circle", "count": 1},
                 {"class": "star", "count": 1, "position": ["left of", 0]}]}

* ``include``: each entry asks for at least ``count`` objects of ``class`` (all of colour ``color``
  when given).
* ``exclude``: each entry ``{"class", "count": N}`` asks for *fewer than* N objects of the class;
  counting prompts pair include count N with exclude N + 1, which makes the count exact.
* ``position: [relation, j]`` on include entry i asks for entry i's objects to be ``relation``
  entry j's objects (GenEval's rule, see ``relations.py``).
* ``text`` (our addition, tag ``text``): the 1-3 digit number the image must show.

Anything outside the vocabulary is a ``UserError`` that names where the metadata came from.
"""

from __future__ import annotations

from typing import Any

from visalign.errors import UserError
from visalign.worlds.shapes.vocab import COLORS, MAX_DIGITS, MAX_OBJECTS, RELATIONS, SHAPES, TAGS

_INCLUDE_KEYS = {"class", "count", "color", "position"}
_EXCLUDE_KEYS = {"class", "count"}


def _fail(where: str, message: str) -> None:
    raise UserError(f"{where}: {message}")


def _check_count(value: Any, where: str, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_OBJECTS + 1:
        _fail(where, f"{what} count must be an integer in 1..{MAX_OBJECTS + 1}, got {value!r}")


def _check_include(req: Any, k: int, n: int, where: str) -> None:
    if not isinstance(req, dict):
        _fail(where, f"include[{k}] must be an object, got {type(req).__name__}")
    unknown = set(req) - _INCLUDE_KEYS
    if unknown:
        _fail(where, f"include[{k}] has unknown key(s) {sorted(unknown)}; allowed: {sorted(_INCLUDE_KEYS)}")
    if req.get("class") not in SHAPES:
        _fail(where, f"include[{k}] has unknown class {req.get('class')!r}; known: {', '.join(SHAPES)}")
    _check_count(req.get("count"), where, f"include[{k}]")
    if req.get("color") is not None and req["color"] not in COLORS:
        _fail(where, f"include[{k}] has unknown color {req['color']!r}; known: {', '.join(COLORS)}")
    pos = req.get("position")
    if pos is not None:
        ok = isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
        ok = (
            ok
            and isinstance(pos[1], int)
            and not isinstance(pos[1], bool)
            and 0 <= pos[1] < n
            and pos[1] != k
        )
        if not ok:
            _fail(
                where,
                f"include[{k}] position must be [relation, index of another include], got {pos!r}; "
                f"relations: {', '.join(RELATIONS)}",
            )


def validate_metadata(md: Any, where: str) -> None:
    """Raise ``UserError`` (prefixed by ``where``, e.g. ``file.jsonl:3``) unless ``md`` is valid."""
    if not isinstance(md, dict):
        _fail(where, f"metadata must be a JSON object, got {type(md).__name__}")
    if md.get("tag") not in TAGS:
        _fail(where, f"unknown tag {md.get('tag')!r}; known: {', '.join(TAGS)}")
    if not isinstance(md.get("prompt"), str) or not md["prompt"].strip():
        _fail(where, "missing or empty 'prompt'")
    if "position" in md:
        _fail(where, "'position' belongs on an include entry (GenEval: include[1].position = [relation, 0])")
    include = md.get("include", [])
    exclude = md.get("exclude", [])
    if not isinstance(include, list) or not isinstance(exclude, list):
        _fail(where, "'include' and 'exclude' must be lists")
    if md["tag"] == "text":
        text = md.get("text")
        if not isinstance(text, str) or not text.isdigit() or not 1 <= len(text) <= MAX_DIGITS:
            _fail(where, f"tag 'text' needs 'text': a string of 1-{MAX_DIGITS} digits, got {text!r}")
        if include or exclude:
            _fail(where, "tag 'text' takes no include/exclude objects")
        return
    if "text" in md:
        _fail(where, f"'text' is only allowed with tag 'text', not {md['tag']!r}")
    if not include:
        _fail(where, f"tag {md['tag']!r} needs a non-empty 'include' list")
    for k, req in enumerate(include):
        _check_include(req, k, len(include), where)
    for k, req in enumerate(exclude):
        if not isinstance(req, dict) or set(req) != _EXCLUDE_KEYS:
            _fail(where, f"exclude[{k}] must be {{'class', 'count'}}, got {req!r}")
        if req["class"] not in SHAPES:
            _fail(where, f"exclude[{k}] has unknown class {req['class']!r}; known: {', '.join(SHAPES)}")
        _check_count(req["count"], where, f"exclude[{k}]")
    total = sum(req["count"] for req in include)
    if total > MAX_OBJECTS:
        _fail(where, f"include asks for {total} objects; a scene holds at most {MAX_OBJECTS}")
