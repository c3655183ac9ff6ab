"""The combinations the QA test split holds out of train, and which of them an item involves.

They are the prompt splits' own held-out combinations (``prompts.held_out``), so that a model trained on the
train prompts or the train questions has met none of them:

* (colour, shape) pairs: no train scene draws such an object and no train question names one;
* (count, shape) pairs: no train question asks for the number of those shapes with that answer;
* (shape, relation, shape) triples, in both wordings ("a star below a triangle" = "a triangle above a star"):
  no train question asks about them (``relation_yesno``) or answers with them (``relation_which``);
* numbers: no train scene shows them.

``held_combinations(item, held)`` names what an item involves; generation uses it to keep train clean and the
tests use it to check the shipped files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visalign.worlds.shapes.prompts import held_out
from visalign.worlds.shapes.vocab import OPPOSITE


@dataclass(frozen=True)
class HeldOut:
    color_shape: frozenset[tuple[str, str]]  # (colour, shape)
    count: frozenset[tuple[int, str]]  # (answer, shape)
    position: frozenset[tuple[str, str, str]]  # (a, relation, b), mirrors included
    numbers: frozenset[str]


def qa_held_out(seed: int = 0) -> HeldOut:
    """The held-out combinations of the QA splits drawn with ``seed`` (those of ``prompts.held_out(seed)``)."""
    ho = held_out(seed)
    triples = set(ho["position"]) | {(b, OPPOSITE[r], a) for a, r, b in ho["position"]}
    return HeldOut(
        color_shape=frozenset(ho["color_shape"]),
        count=frozenset(ho["counting"]),
        position=frozenset(triples),
        numbers=frozenset(ho["text"]),
    )


def scene_pairs(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """(colour, shape) of every coloured include entry of a scene's metadata."""
    return [(r["color"], r["class"]) for r in metadata.get("include", []) if r.get("color")]


def _referent_pairs(query: dict[str, Any]) -> list[tuple[str, str]]:
    refs = [query] + [query[k] for k in ("a", "b") if isinstance(query.get(k), dict)]
    return [(r["color"], r["shape"]) for r in refs if r.get("color") and r.get("shape")]


def held_combinations(item: dict[str, Any], held: HeldOut) -> list[str]:
    """The held-out combinations that ``item`` shows, asks about or answers with (empty: nothing held out)."""
    kind, answer, query = item["type"], item["answer"], item.get("query", {})
    md = item["image"]["metadata"]
    found = [f"{c} {s} in the scene" for c, s in scene_pairs(md) if (c, s) in held.color_shape]
    found += [f"{c} {s} asked" for c, s in _referent_pairs(query) if (c, s) in held.color_shape]
    if kind == "count" and query.get("shape") and (int(answer), query["shape"]) in held.count:
        found.append(f"{answer} {query['shape']}")
    if kind == "color" and (answer, query["shape"]) in held.color_shape:
        found.append(f"{answer} {query['shape']} answered")
    if kind == "shape" and (query["color"], answer) in held.color_shape:
        found.append(f"{query['color']} {answer} answered")
    if (
        kind == "relation_yesno"
        and (query["a"]["shape"], query["relation"], query["b"]["shape"]) in held.position
    ):
        found.append(f"{query['a']['shape']} {query['relation']} {query['b']['shape']}")
    if kind == "relation_which" and (answer, query["relation"], query["b"]["shape"]) in held.position:
        found.append(f"{answer} {query['relation']} {query['b']['shape']}")
    if md.get("text") is not None and str(md["text"]) in held.numbers:
        found.append(f"number {md['text']}")
    return found
