"""The question templates of the ShapesWorld QA set, several per question type.

Several wordings per type keep a policy from keying on one sentence; every wording of a type asks the same
thing, so the answer never depends on which one was drawn. Grounding questions state the answer format and the
coordinate frame, since a model cannot guess either from the image.
"""

from __future__ import annotations

from visalign.worlds.shapes.vocab import PLURALS

QUESTION_TYPES: tuple[str, ...] = (
    "count",
    "color",
    "shape",
    "relation_yesno",
    "relation_which",
    "text",
    "grounding",
)

QUESTIONS: dict[str, tuple[str, ...]] = {
    "count": (
        "How many {things} are there?",
        "Count the {things} in the image.",
        "How many {things} can you see?",
        "What is the number of {things} in the picture?",
    ),
    "color": (
        "What colour is the {thing}?",
        "What color is the {thing}?",
        "Which colour does the {thing} have?",
        "What is the colour of the {thing}?",
    ),
    "shape": (
        "What shape is the {thing}?",
        "Which shape is {color}?",
        "What is the shape of the {thing}?",
        "Name the shape of the {thing}.",
    ),
    "relation_yesno": (
        "Is the {a} {rel} the {b}?",
        "Is the {a} {rel_long} the {b}? Answer yes or no.",
        "Answer yes or no: is the {a} {rel_long} the {b}?",
    ),
    "relation_which": (
        "Which shape is {rel} the {b}?",
        "What shape is {rel_long} the {b}?",
        "Name the shape that is {rel_long} the {b}.",
    ),
    "text": (
        "What number is written?",
        "What number is shown in the image?",
        "Read the number in the picture.",
        "Which number is written in the image?",
    ),
    "grounding": (
        "Give the bounding box of the {thing} as [x0, y0, x1, y1] in pixels.",
        "Where is the {thing}? Answer with its bounding box [x0, y0, x1, y1] in pixels.",
        "Locate the {thing} in this {size}x{size} image as [x0, y0, x1, y1].",
    ),
}

LONG_RELATION: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}


def noun(shape: str | None, color: str | None, plural: bool = False) -> str:
    """'red circle', 'circle', 'red object' (plural: 'red circles', 'circles', 'red objects')."""
    head = (PLURALS[shape] if plural else shape) if shape else ("objects" if plural else "object")
    return f"{color} {head}" if color else head


def phrase(kind: str, k: int, **slots: object) -> str:
    """Wording ``k`` of question type ``kind`` with its slots filled."""
    templates = QUESTIONS[kind]
    return templates[k % len(templates)].format(**slots)
