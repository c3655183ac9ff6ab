"""Prompt templates per tag and the builders that turn a combination into GenEval metadata.

Each builder takes the combination (shapes, colours, count, relation, number) and a phrasing index
and returns one metadata dict. The phrasings mirror GenEval's "a photo of ..." prompts plus a few
plainer variants, so that a policy cannot key on one sentence pattern.
"""

from __future__ import annotations

from visalign.worlds.shapes.vocab import NUMBER_WORDS, PLURALS

PHRASINGS: dict[str, tuple[str, ...]] = {
    "single_object": ("a photo of {a_s}", "an image of {a_s}", "{a_s}", "a single {s}"),
    "two_object": ("a photo of {a_s} and {a_t}", "{a_s} and {a_t}", "an image with {a_s} and {a_t}"),
    "counting": ("a photo of {n} {ps}", "{n} {ps}", "an image with exactly {n} {ps}"),
    "colors": ("a photo of {a_cs}", "{a_cs}", "an image of {a_cs}"),
    "position": (
        "a photo of {a_s} {rel} {a_t}",
        "{a_s} {rel_long} {a_t}",
        "an image where {a_s} is {rel_long} {a_t}",
    ),
    "color_attr": ("a photo of {a_cs} and {a_dt}", "{a_cs} and {a_dt}", "an image with {a_cs} and {a_dt}"),
    "text": ("an image of the number {x}", "the number {x}", 'a picture with "{x}" written on it'),
}

_LONG_RELATION = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}


def article(phrase: str) -> str:
    """'a star', 'an orange star'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _fmt(tag: str, k: int, **words: str) -> str:
    return PHRASINGS[tag][k % len(PHRASINGS[tag])].format(**words)


def single_object(shape: str, k: int) -> dict:
    prompt = _fmt("single_object", k, a_s=article(shape), s=shape)
    return {"tag": "single_object", "prompt": prompt, "include": [{"class": shape, "count": 1}]}


def two_object(a: str, b: str, k: int) -> dict:
    prompt = _fmt("two_object", k, a_s=article(a), a_t=article(b))
    return {
        "tag": "two_object",
        "prompt": prompt,
        "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
    }


def counting(shape: str, n: int, k: int) -> dict:
    prompt = _fmt("counting", k, n=NUMBER_WORDS[n], ps=PLURALS[shape])
    return {
        "tag": "counting",
        "prompt": prompt,
        "include": [{"class": shape, "count": n}],
        "exclude": [{"class": shape, "count": n + 1}],
    }


def colors(color: str, shape: str, k: int) -> dict:
    prompt = _fmt("colors", k, a_cs=article(f"{color} {shape}"))
    return {"tag": "colors", "prompt": prompt, "include": [{"class": shape, "count": 1, "color": color}]}


def position(a: str, relation: str, b: str, k: int) -> dict:
    """'a <a> <relation> a <b>': GenEval puts the reference object b first and the relation on a."""
    prompt = _fmt(
        "position", k, a_s=article(a), a_t=article(b), rel=relation, rel_long=_LONG_RELATION[relation]
    )
    include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}]
    return {"tag": "position", "prompt": prompt, "include": include}


def color_attr(ca: str, a: str, cb: str, b: str, k: int) -> dict:
    prompt = _fmt("color_attr", k, a_cs=article(f"{ca} {a}"), a_dt=article(f"{cb} {b}"))
    include = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
    return {"tag": "color_attr", "prompt": prompt, "include": include}


def text(number: str, k: int) -> dict:
    return {"tag": "text", "prompt": _fmt("text", k, x=number), "include": [], "text": number}
