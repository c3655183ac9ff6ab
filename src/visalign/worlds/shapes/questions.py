"""Verifiable visual questions about ShapesWorld scenes: the QA set for vision-language RL.

Every question is asked about a rendered scene and has exactly one machine-checkable answer, read from the
placed scene (``questions_build.py``). Seven types, several wordings each (``questions_phrasings.py``):

==================  ============================================================  =================================
type                example                                                       answer
==================  ============================================================  =================================
``count``           "How many red circles are there?" (or circles, red objects)   "0".."4"
``color``           "What colour is the star?" (exactly one star)                 a palette colour name
``shape``           "What shape is the blue object?" (exactly one blue one)       a shape name
``relation_yesno``  "Is the square left of the cross?"                            "yes" / "no"
``relation_which``  "Which shape is above the triangle?"                          a shape name
``text``            "What number is written?"                                     the digits, e.g. "42"
``grounding``       "Give the bounding box of the blue triangle as ..."           "[x0, y0, x1, y1]" (whole pixels)
==================  ============================================================  =================================

Relation questions are only asked where the layout answers them clearly (``questions_scene.py``). Grounding
boxes are in pixels of the rendered ``size`` x ``size`` image: origin at its top-left corner, y down, x1 / y1
the far edges (the whole image is ``[0, 0, size, size]``), the smallest whole-pixel box holding every pixel the
object covers by more than half (``questions_scene.pixel_box``).

File schema (``data/qa_train.jsonl``, ``data/qa_test.jsonl``), one JSON object per line::

    {"messages": [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": "How many red circles are there?"}]}],
     "type": "count", "answer": "2", "query": {"shape": "circle", "color": "red"}, "held_out": false,
     "image": {"metadata": {"tag": "color_attr", "prompt": "two red circles and a blue star",
                            "include": [{"class": "circle", "count": 2, "color": "red"},
                                        {"class": "star", "count": 1, "color": "blue"}]},
               "seed": 123, "size": 64}}

* ``messages``: the conversation in the chat format of TRL and of Hugging Face processors' chat templates (the
  image part is a placeholder; the image itself comes from ``render_question_image``). TRL's GRPO trainer reads
  this column as ``prompt`` (``dataset.rename_column("messages", "prompt")``); EasyR1's ``problem`` is the text
  part with ``<image>`` before it.
* ``type``, ``answer``: what the answer rewards (``visalign.rewards.answers``) score against.
* ``box``: grounding items only, the target ``[x0, y0, x1, y1]`` (the same numbers as the answer).
* ``query``: the asked slots (``shape`` / ``color`` of the referent; ``a``, ``relation``, ``b`` of a relation),
  for breaking results down by combination.
* ``held_out``: whether the item involves a combination held out of train (``questions_heldout.py``).
* ``image``: GenEval-style metadata naming every object and its colour (or the number), the render seed and
  the size: ``render_scene(metadata, seed, size)`` draws the image, exactly, on any machine.

Splits: ``TEST_PER_TYPE`` items per type in test (``TEST_HELD_PER_TYPE`` of them on held-out combinations),
``TRAIN_PER_TYPE`` per type in train (none on a held-out combination); no render seed is in both.
``generate_qa_splits(seed)`` is deterministic; the shipped files are ``generate_qa_splits(0)`` and
``visalign world questions`` rewrites them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from visalign.errors import UserError
from visalign.seeding import numpy_rng
from visalign.worlds.shapes.prompts import DATA_DIR
from visalign.worlds.shapes.questions_build import BUILDERS, Context, Draft
from visalign.worlds.shapes.questions_heldout import HeldOut, held_combinations, qa_held_out
from visalign.worlds.shapes.questions_io import load_qa_file, question_text, validate_item, write_qa_file
from visalign.worlds.shapes.questions_phrasings import QUESTION_TYPES
from visalign.worlds.shapes.render import render_scene
from visalign.worlds.shapes.scene import Scene, sample_scene

__all__ = [
    "QUESTION_TYPES",
    "generate_qa_splits",
    "load_qa_file",
    "load_qa_split",
    "question_scene",
    "question_text",
    "render_question_image",
    "validate_item",
    "write_qa_splits",
]

QA_SPLITS = ("train", "test")
QA_FILES = {"train": "qa_train.jsonl", "test": "qa_test.jsonl"}
TRAIN_PER_TYPE = 300  # 2,100 train items: the file stays under 1 MB (a line is ~460 bytes)
TEST_PER_TYPE = 50
TEST_HELD_PER_TYPE = 30
QA_STREAM = 7  # generate_qa_splits(seed) draws split s, type t from numpy_rng(seed, QA_STREAM, s, t)
MAX_DRAWS = 1000  # draws of one item before generation gives up (a builder that can never succeed is a bug)


def _item(draft: Draft, held: HeldOut, size: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": draft["question"]}]}
        ],
        "type": draft["type"],
        "answer": draft["answer"],
        "query": draft["query"],
        "held_out": False,
        "image": {"metadata": draft["metadata"], "seed": draft["seed"], "size": size},
    }
    if "box" in draft:
        item["box"] = draft["box"]
    item["held_out"] = bool(held_combinations(item, held))
    return item


def _build(kind: str, ctx: Context, held: HeldOut) -> dict[str, Any]:
    for _ in range(MAX_DRAWS):
        draft = BUILDERS[kind](ctx)
        if draft is None:
            continue
        item = _item(draft, held, ctx.size)
        if item["held_out"] == ctx.want_held:
            ctx.used_seeds.add(draft["seed"])
            ctx.tally[item["answer"]] += 1
            return item
    raise RuntimeError(f"no {kind} question after {MAX_DRAWS} draws")


def generate_qa_splits(
    seed: int = 0, size: int = 64, train_per_type: int | None = None, test_per_type: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The train and test QA items, deterministically from ``seed`` (images of ``size`` pixels).

    ``train_per_type`` / ``test_per_type`` (default ``TRAIN_PER_TYPE`` / ``TEST_PER_TYPE``) size a larger or
    smaller set; a test split holds ``TEST_HELD_PER_TYPE`` held-out items per type (all of them if it is smaller).
    """
    sizes = {"test": TEST_PER_TYPE if test_per_type is None else test_per_type,
             "train": TRAIN_PER_TYPE if train_per_type is None else train_per_type}  # fmt: skip
    held = qa_held_out(seed)
    used: set[int] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for s, split in enumerate(
        ("test", "train")
    ):  # test first: its seeds are taken before train draws its own
        items = []
        n_held = min(TEST_HELD_PER_TYPE, sizes[split]) if split == "test" else 0
        for t, kind in enumerate(QUESTION_TYPES):
            rng: np.random.Generator = numpy_rng(seed, QA_STREAM, s, t)
            tally: Counter[str] = Counter()
            for i in range(sizes[split]):
                ctx = Context(rng, held, want_held=i < n_held, size=size, used_seeds=used, tally=tally)
                items.append(_build(kind, ctx, held))
        out[split] = items
    return {"train": out["train"], "test": out["test"]}


def write_qa_splits(
    out_dir: str | Path = DATA_DIR, seed: int = 0, size: int = 64, **per_type: int | None
) -> dict[str, Path]:
    """Regenerate ``qa_train.jsonl`` and ``qa_test.jsonl`` into ``out_dir`` (``per_type``: the sizes of
    ``generate_qa_splits``); returns split -> path."""
    splits = generate_qa_splits(seed, size, **per_type)
    return {name: write_qa_file(Path(out_dir) / QA_FILES[name], splits[name]) for name in QA_SPLITS}


def load_qa_split(name: str | Path) -> list[dict[str, Any]]:
    """The shipped ``"train"`` or ``"test"`` QA split, or the items of a QA file at a path."""
    if str(name) in QA_SPLITS:
        return load_qa_file(DATA_DIR / QA_FILES[str(name)])
    path = Path(name)
    if not path.suffix and not path.exists():
        raise UserError(
            f"unknown QA split {str(name)!r}; known: {', '.join(QA_SPLITS)} (or a path to a .jsonl file)"
        )
    return load_qa_file(path)


def question_scene(item: dict[str, Any]) -> Scene:
    """The placed scene of an item (its objects with centres and radii, or its number)."""
    image = item["image"]
    return sample_scene(image["metadata"], numpy_rng(image["seed"]), image["size"])


def render_question_image(item: dict[str, Any]) -> np.ndarray:
    """The item's image, uint8 [size, size, 3], rendered from (metadata, seed, size); the same on every call."""
    image = item["image"]
    return render_scene(image["metadata"], image["seed"], image["size"])
