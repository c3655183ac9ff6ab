"""Mismatched image / prompt pairs: what a wrong generation looks like, for measuring false accepts.

``corrupt(md, rng)`` returns ``(kind, scene_md)``: metadata for a scene that differs from ``md`` in one
way that GenEval's rules must reject (a wrong colour, one of the three nearest to the requested one; a wrong count, a swapped relation, a missing
object, a wrong shape, swapped colours, a wrong digit). Rendering ``scene_md`` and verifying the image
against ``md`` must fail.
"""

from __future__ import annotations

import copy

import numpy as np

from visalign.worlds.shapes.vocab import COLORS, MAX_DIGITS, MAX_OBJECTS, OPPOSITE, SHAPES

KINDS: dict[str, tuple[str, ...]] = {
    "single_object": ("wrong shape",),
    "two_object": ("missing object", "wrong shape"),
    "counting": ("wrong count",),
    "colors": ("wrong colour", "wrong shape"),
    "position": ("swapped relation", "missing object"),
    "color_attr": ("wrong colour", "swapped colours", "missing object"),
    "text": ("wrong digit", "missing digit", "extra digit"),
}


def _nearest_colours(name: str) -> list[str]:
    """Other palette colours, nearest first (CIELAB)."""
    from visalign.worlds.shapes.classify import srgb_to_lab

    lab = {c: srgb_to_lab(np.array(rgb) / 255.0) for c, rgb in COLORS.items()}
    return sorted((c for c in COLORS if c != name), key=lambda c: float(np.linalg.norm(lab[c] - lab[name])))


def _other(options: list[str], avoid: set[str], rng: np.random.Generator) -> str:
    choices = [o for o in options if o not in avoid]
    return choices[int(rng.integers(len(choices)))]


def corrupt(md: dict, rng: np.random.Generator) -> tuple[str, dict]:
    """(kind of mismatch, metadata of the scene to render instead)."""
    tag = md["tag"]
    kinds = KINDS[tag]
    kind = kinds[int(rng.integers(len(kinds)))]
    out = copy.deepcopy(md)
    inc = out.get("include", [])
    if kind == "wrong shape":
        k = int(rng.integers(len(inc)))
        inc[k]["class"] = _other(list(SHAPES), {r["class"] for r in md["include"]}, rng)
    elif kind == "missing object":
        k = int(rng.integers(len(inc)))
        keep = inc[1 - k]
        keep.pop("position", None)
        out["include"] = [keep]
    elif kind == "wrong count":
        n = inc[0]["count"]
        options = [c for c in (n - 1, n + 1) if 1 <= c <= MAX_OBJECTS]
        inc[0]["count"] = options[int(rng.integers(len(options)))]
        out.pop("exclude", None)
    elif kind == "wrong colour":  # one of the three colours nearest to the requested one: the hard cases
        k = int(rng.integers(len(inc)))
        near = _nearest_colours(inc[k]["color"])[:3]
        inc[k]["color"] = near[int(rng.integers(len(near)))]
    elif kind == "swapped colours":
        inc[0]["color"], inc[1]["color"] = inc[1]["color"], inc[0]["color"]
    elif kind == "swapped relation":
        rel, j = inc[1]["position"]
        inc[1]["position"] = [OPPOSITE[rel], j]
    else:  # digits
        text = md["text"]
        digits = "0123456789"
        if kind == "extra digit" and len(text) == MAX_DIGITS:
            kind = "missing digit"
        if kind == "missing digit" and len(text) == 1:
            kind = "wrong digit"
        k = int(rng.integers(len(text)))
        if kind == "wrong digit":
            new = text[:k] + _other(list(digits), {text[k]}, rng) + text[k + 1 :]
        elif kind == "missing digit":
            new = text[:k] + text[k + 1 :]
        else:
            new = text[:k] + digits[int(rng.integers(10))] + text[k:]
        out["text"] = new.lstrip("0") or "0"
        if out["text"] == text:
            out["text"] = text[:-1] + _other(list(digits), {text[-1]}, rng)
    return kind, out
