"""The ShapesWorld vocabulary: shape classes, the colour palette, the background, the task tags.

Everything a prompt may mention is listed here, so that prompt validation, the renderer and the
verifier agree on one closed world. Colours are GenEval's ten colour names; their RGB values were
chosen to stay far apart from each other (in CIELAB) and from the grey background, so that blur,
noise, JPEG and colour drift do not move one colour onto another.
"""

from __future__ import annotations

# Upright shapes whose silhouettes stay distinct at 10-20 px: the verifier tells them apart by their
# bounding-box-normalised masks (a circle fills 79% of its box, a square 100%, a triangle 50% with the
# mass at the bottom, a cross 56% with empty corners, a star about 40% with five spikes).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}

# GenEval's ten colour names (all ten are used).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 150, 0),
    "yellow": (250, 230, 30),
    "green": (20, 125, 40),
    "blue": (30, 70, 230),
    "purple": (150, 35, 160),
    "pink": (255, 130, 200),
    "brown": (115, 65, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}

# Mid grey: as far from black as from white, and neutral, so a drifted background reveals the drift.
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

# GenEval's six tags plus our OCR analogue.
TAGS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
    "text",
)

# GenEval's four relations. ``position: [rel, j]`` on include[i] means "include[i] is <rel> include[j]".
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

COUNT_RANGE: tuple[int, int] = (2, 4)  # counting prompts ask for exactly 2..4 objects
MAX_OBJECTS = 5  # a scene holds up to 5 objects (one more than the largest count, for the exclude check)
MAX_DIGITS = 3  # text prompts ask for a 1-3 digit number
