"""One builder per question type: draw what to ask, a scene that makes the answer unique, and the answer.

A builder draws the asked combination first (held out of train or not, as the split wants), then the scene's
objects around it so that the question has exactly one answer (one star when asking for the star's colour; the
distractors of a count never fit the counted description), then a render seed. The answer is read back from the
placed scene, never assumed from the plan; relation questions try seeds until the layout gives a clear answer
(``questions_scene``). A builder returns None when a draw does not work out, and is called again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visalign.worlds.shapes.questions_heldout import HeldOut
from visalign.worlds.shapes.questions_phrasings import LONG_RELATION, QUESTIONS, noun, phrase
from visalign.worlds.shapes.questions_scene import (
    clearly,
    clearly_not,
    matching,
    objects_metadata,
    pixel_box,
    place,
    text_metadata,
    the,
)
from visalign.worlds.shapes.scene import Scene
from visalign.worlds.shapes.vocab import COLORS, MAX_DIGITS, RELATIONS, SHAPES

COUNT_ANSWERS = (0, 1, 2, 3, 4)  # "how many" answers; a scene holds up to 5 objects, distractors included
LAYOUT_TRIES = 200  # render seeds tried for a relation question before its plan is redrawn
MAX_DISTRACTORS = 3


@dataclass
class Context:
    """What a builder draws with: the split's random stream, the held-out set, whether this item must use one."""

    rng: np.random.Generator
    held: HeldOut
    want_held: bool
    size: int
    used_seeds: set[int] = field(default_factory=set)
    tally: Counter[str] = field(
        default_factory=Counter
    )  # answers given so far by the items of this split and type

    def pick(self, items: list | tuple) -> Any:
        return items[int(self.rng.integers(len(items)))]

    def fewest(self, options: list | tuple) -> Any:
        """A random one of the ``options`` given least often as an answer so far: keeps the answers balanced."""
        least = min(self.tally[str(o)] for o in options)
        return self.pick([o for o in options if self.tally[str(o)] == least])

    def seed(self) -> int:
        while True:
            s = int(self.rng.integers(2**31))
            if s not in self.used_seeds:
                return s

    def color(self, shape: str, avoid: tuple[str, ...] = ()) -> str:
        """A colour for a ``shape`` object that makes no held-out (colour, shape) pair."""
        return self.pick([c for c in COLORS if c not in avoid and (c, shape) not in self.held.color_shape])

    def held_pair(self) -> tuple[str, str]:
        return self.pick(sorted(self.held.color_shape))

    def seen_pair(self) -> tuple[str, str]:
        shape = self.pick(SHAPES)
        return self.color(shape), shape

    def shape_for(self, color: str, avoid: tuple[str, ...] = ()) -> str:
        """A shape for a ``color`` object that makes no held-out (colour, shape) pair."""
        return self.pick([s for s in SHAPES if s not in avoid and (color, s) not in self.held.color_shape])

    def distractors(
        self, fits: Callable[[str, str], bool], most: int = MAX_DISTRACTORS
    ) -> list[tuple[str, str]]:
        """0..most (shape, colour) objects for which ``fits(shape, colour)`` holds, none a held-out pair."""
        out: list[tuple[str, str]] = []
        for _ in range(int(self.rng.integers(most + 1))):
            for _ in range(100):
                shape = self.pick(SHAPES)
                color = self.color(shape)
                if fits(shape, color):
                    out.append((shape, color))
                    break
        return out

    def scene_of(self, objects: list[tuple[str, str]]) -> tuple[dict, int, Scene] | None:
        """Metadata (objects in a random order), a fresh seed and the placed scene."""
        order = self.rng.permutation(len(objects))
        md = objects_metadata([objects[i] for i in order])
        seed = self.seed()
        scene = place(md, seed, self.size)
        return None if scene is None else (md, seed, scene)

    def wording(self, kind: str) -> int:
        return int(self.rng.integers(len(QUESTIONS[kind])))


Draft = dict[str, Any]  # type, question, answer, query, metadata, seed (and box for grounding)


def _draft(kind: str, question: str, answer: str, query: dict, md: dict, seed: int, **extra: Any) -> Draft:
    return {"type": kind, "question": question, "answer": answer, "query": query, "metadata": md, "seed": seed,
            **extra}  # fmt: skip


def _ref(shape: str | None, color: str | None) -> dict[str, str]:
    return {k: v for k, v in (("shape", shape), ("color", color)) if v is not None}


def build_count(ctx: Context) -> Draft | None:
    rng = ctx.rng
    if ctx.want_held and rng.random() < 0.5:  # a held-out (count, shape) pair
        n, shape = ctx.pick(sorted(ctx.held.count))
        color = ctx.color(shape) if rng.random() < 0.5 else None
    elif ctx.want_held:  # a held-out (colour, shape) pair, counted
        (color, shape), n = ctx.held_pair(), ctx.fewest(COUNT_ANSWERS)
    else:
        n, kind = (
            ctx.fewest(COUNT_ANSWERS),
            ctx.pick(("shape", "shape", "color_shape", "color_shape", "color")),
        )
        color, shape = ctx.seen_pair()
        shape, color = (
            (shape, None) if kind == "shape" else (None, color) if kind == "color" else (shape, color)
        )
        if shape is not None and (n, shape) in ctx.held.count:
            return None
    targets = []
    for _ in range(n):
        s = shape or ctx.shape_for(color)
        targets.append((s, color or ctx.color(s)))

    def fits(s: str, c: str) -> bool:
        return not ((shape is None or s == shape) and (color is None or c == color))

    objects = targets + ctx.distractors(fits, most=5 - n)
    placed = ctx.scene_of(objects) if objects else None
    if placed is None:
        return None
    md, seed, scene = placed
    answer = len(matching(scene, shape, color))
    question = phrase("count", ctx.wording("count"), things=noun(shape, color, plural=True))
    return _draft("count", question, str(answer), _ref(shape, color), md, seed)


def build_color(ctx: Context) -> Draft | None:
    if ctx.want_held:
        color, shape = ctx.held_pair()
    else:
        color = ctx.fewest(tuple(COLORS))
        shape = ctx.shape_for(color)
    placed = ctx.scene_of([(shape, color)] + ctx.distractors(lambda s, c: s != shape))
    if placed is None:
        return None
    md, seed, scene = placed
    obj = the(scene, shape=shape)
    question = phrase("color", ctx.wording("color"), thing=shape)
    return None if obj is None else _draft("color", question, obj.color, {"shape": shape}, md, seed)


def build_shape(ctx: Context) -> Draft | None:
    if ctx.want_held:
        color, shape = ctx.held_pair()
    else:
        shape = ctx.fewest(SHAPES)
        color = ctx.color(shape)
    placed = ctx.scene_of([(shape, color)] + ctx.distractors(lambda s, c: c != color))
    if placed is None:
        return None
    md, seed, scene = placed
    obj = the(scene, color=color)
    question = phrase("shape", ctx.wording("shape"), thing=noun(None, color), color=color)
    return None if obj is None else _draft("shape", question, obj.shape, {"color": color}, md, seed)


def _triple(ctx: Context, balance_a: bool = False) -> tuple[str, str, str] | None:
    """(a, relation, b) of distinct shapes: a held-out triple when wanted, else one that is not held out
    (``balance_a``: ``a`` is the answer, kept balanced)."""
    if ctx.want_held:
        return ctx.pick(sorted(ctx.held.position))
    a = ctx.fewest(SHAPES) if balance_a else ctx.pick(SHAPES)
    b = ctx.pick([s for s in SHAPES if s != a])
    triple = (a, ctx.pick(RELATIONS), b)
    return None if triple in ctx.held.position else triple


def _relation_scene(
    ctx: Context, objects: list[tuple[str, str]], ok: Callable[[Scene], bool]
) -> tuple | None:
    """Metadata, seed and scene of ``objects`` with a layout for which ``ok`` holds (a few seeds tried)."""
    order = ctx.rng.permutation(len(objects))
    md = objects_metadata([objects[i] for i in order])
    for _ in range(LAYOUT_TRIES):
        seed = ctx.seed()
        scene = place(md, seed, ctx.size)
        if scene is not None and ok(scene):
            return md, seed, scene
    return None


def build_relation_yesno(ctx: Context) -> Draft | None:
    triple = _triple(ctx)
    if triple is None:
        return None
    a, rel, b = triple
    yes = ctx.fewest(("yes", "no")) == "yes"
    ca, cb = ctx.color(a), ctx.color(b)
    objects = [(a, ca), (b, cb)] + ctx.distractors(lambda s, c: s not in (a, b), most=2)

    def ok(scene: Scene) -> bool:
        oa, ob = the(scene, shape=a), the(scene, shape=b)
        return clearly(oa, rel, ob) if yes else clearly_not(oa, rel, ob)

    placed = _relation_scene(ctx, objects, ok)
    if placed is None:
        return None
    md, seed, _ = placed
    named = bool(ctx.rng.random() < 0.3)  # sometimes the referents carry their colours too
    ra, rb = _ref(a, ca if named else None), _ref(b, cb if named else None)
    words = {
        "a": noun(a, ra.get("color")),
        "b": noun(b, rb.get("color")),
        "rel": rel,
        "rel_long": LONG_RELATION[rel],
    }
    question = phrase("relation_yesno", ctx.wording("relation_yesno"), **words)
    query = {"a": ra, "relation": rel, "b": rb}
    return _draft("relation_yesno", question, "yes" if yes else "no", query, md, seed)


def build_relation_which(ctx: Context) -> Draft | None:
    triple = _triple(ctx, balance_a=True)
    if triple is None:
        return None
    a, rel, b = triple
    cb = ctx.color(b)
    objects = [(a, ctx.color(a)), (b, cb)] + ctx.distractors(lambda s, c: s != b, most=1)

    def ok(scene: Scene) -> bool:
        ob = the(scene, shape=b)
        others = [o for o in scene.objects if o is not ob]
        sure = [o for o in others if clearly(o, rel, ob)]
        return (
            len(sure) == 1
            and sure[0].shape == a
            and all(clearly_not(o, rel, ob) for o in others if o is not sure[0])
        )

    placed = _relation_scene(ctx, objects, ok)
    if placed is None:
        return None
    md, seed, _ = placed
    rb = _ref(b, cb if ctx.rng.random() < 0.3 else None)
    words = {"b": noun(b, rb.get("color")), "rel": rel, "rel_long": LONG_RELATION[rel]}
    question = phrase("relation_which", ctx.wording("relation_which"), **words)
    return _draft("relation_which", question, a, {"relation": rel, "b": rb}, md, seed)


def build_text(ctx: Context) -> Draft | None:
    if ctx.want_held:
        number = ctx.pick(sorted(ctx.held.numbers))
    else:
        digits = int(ctx.rng.integers(1, MAX_DIGITS + 1))
        number = str(int(ctx.rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits)))
        if number in ctx.held.numbers:
            return None
    md, seed = text_metadata(number), ctx.seed()
    scene = place(md, seed, ctx.size)
    if scene is None or scene.text is None:
        return None
    return _draft("text", phrase("text", ctx.wording("text")), scene.text.text, {}, md, seed)


def build_grounding(ctx: Context) -> Draft | None:
    color, shape = ctx.held_pair() if ctx.want_held else ctx.seen_pair()
    mode = ctx.pick(("color_shape", "shape", "color"))
    by_shape, by_color = mode != "color", mode != "shape"

    def fits(s: str, c: str) -> bool:
        return not ((s == shape or not by_shape) and (c == color or not by_color))

    placed = ctx.scene_of([(shape, color)] + ctx.distractors(fits))
    if placed is None:
        return None
    md, seed, scene = placed
    query = _ref(shape if by_shape else None, color if by_color else None)
    obj = the(scene, query.get("shape"), query.get("color"))
    if obj is None or (obj.shape, obj.color) != (shape, color):
        return None
    box = pixel_box(obj, ctx.size)
    question = phrase("grounding", ctx.wording("grounding"), thing=noun(query.get("shape"), query.get("color")),
                      size=ctx.size)  # fmt: skip
    return _draft("grounding", question, "[{}, {}, {}, {}]".format(*box), query, md, seed, box=box)


BUILDERS: dict[str, Callable[[Context], Draft | None]] = {
    "count": build_count,
    "color": build_color,
    "shape": build_shape,
    "relation_yesno": build_relation_yesno,
    "relation_which": build_relation_which,
    "text": build_text,
    "grounding": build_grounding,
}
