"""The fixed train / test prompt splits of ShapesWorld, their generation and their loading.

The test split is small (10 prompts per tag, 70 in all) because RL runs evaluate on it many times.
Some combinations are *held out*: they occur in test and never in train, so that a trained policy's
test score measures generalisation to unseen compositions, not recall of training prompts:

* two_object: 2 unordered shape pairs;       * counting: 3 (count, shape) pairs, one per count;
* colors and color_attr: 5 (colour, shape) pairs, one per shape, never shown together in train;
* position: 6 (shape, relation, shape) triples (and their mirror wordings); * text: 10 numbers.
* single_object has only 5 combinations; for each shape, test and train use different phrasings.

Every test prompt string is absent from train. ``generate_splits(seed)`` is deterministic; the shipped
files under ``data/`` are ``generate_splits(0)`` and ``visalign world prompts`` rewrites them.

The ``iid`` split is the anchors' protocol (Flow-GRPO trains on GenEval-style prompts from the same templates and
objects as its test prompts): ``IID_PER_TAG`` prompts per tag drawn at random from the train split (at most half
of a tag's), the training distribution itself. A run that evaluates on it trains with ``data.exclude: [iid]``, so
none of them is in its training prompts; ``train.jsonl`` keeps them, so pretraining reads what it always read.
``test`` stays the compositional split (combinations never seen in train).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from visalign.errors import UserError
from visalign.jsonl import read_checked
from visalign.seeding import numpy_rng, seed_from_ints
from visalign.worlds.shapes import phrasings as ph
from visalign.worlds.shapes.metadata import validate_metadata
from visalign.worlds.shapes.vocab import COLORS, COUNT_RANGE, OPPOSITE, RELATIONS, SHAPES, TAGS

__all__ = ["generate_splits", "held_out", "load_prompt_file", "load_split", "validate_metadata", "write_splits"]

DATA_DIR = Path(__file__).parent / "data"
SPLITS = ("train", "test", "iid")
IID_PER_TAG = 20
TEST_PER_TAG = 10
COLOR_ATTR_TRAIN = 300
TEXT_TRAIN = 300
COLOR_ATTR_TEST_WITH_HELD = 6  # color_attr test prompts that hold a held-out (colour, shape) pair

# Two random streams per split seed: ``held_out(seed)`` is called on its own too (the tests check the splits
# against it), so it draws from a stream of its own and the prompts are drawn from the next one.
HELD_OUT_STREAM = 0  # held_out(seed) draws from numpy_rng(seed + HELD_OUT_STREAM)
SPLIT_STREAM = 1  # generate_splits(seed) draws phrasings and seen prompts from numpy_rng(seed + SPLIT_STREAM)
IID_STREAM = 7919  # the i.i.d. split's draws: numpy_rng(seed_from_ints(seed, IID_STREAM)), apart from both

Split = tuple[list[dict], list[dict]]  # (test, train) metadata of one tag


def _pick(rng: np.random.Generator, items: list, n: int) -> list:
    """n distinct items in a seeded random order."""
    return [items[i] for i in rng.permutation(len(items))[:n]]


def held_out(seed: int = 0) -> dict[str, list]:
    """The combinations that occur in test and never in train, per tag."""
    rng = numpy_rng(seed + HELD_OUT_STREAM)
    pairs = list(itertools.combinations(SHAPES, 2))
    counts = list(range(COUNT_RANGE[0], COUNT_RANGE[1] + 1))
    count_shapes = _pick(rng, list(SHAPES), len(counts))
    colour_pick = _pick(rng, list(COLORS), len(SHAPES))
    ordered = list(itertools.permutations(SHAPES, 2))
    triples = [(a, r, b) for a, b in ordered for r in RELATIONS]
    numbers = (
        _pick(rng, [str(i) for i in range(10)], 2)
        + _pick(rng, [str(i) for i in range(10, 100)], 4)
        + _pick(rng, [str(i) for i in range(100, 1000)], 4)
    )
    return {
        "two_object": _pick(rng, pairs, 2),
        "counting": list(zip(counts, count_shapes, strict=True)),
        "color_shape": list(zip(colour_pick, SHAPES, strict=True)),
        "position": _pick(rng, triples, 6),
        "text": numbers,
    }


def _phrasing(rng: np.random.Generator, tag: str) -> int:
    """A random phrasing index for ``tag``."""
    return int(rng.integers(len(ph.PHRASINGS[tag])))


def _split_tag(rng: np.random.Generator, held: list[dict], seen: list[dict], n_test: int) -> Split:
    """Test = every held-out prompt given + random seen prompts up to n_test; train = the other seen prompts."""
    extra = _pick(rng, seen, n_test - len(held))
    chosen = {md["prompt"] for md in extra}
    return held + extra, [md for md in seen if md["prompt"] not in chosen]


def _split_combinations(
    rng: np.random.Generator, tag: str, phrase: Callable[..., dict], held: list[tuple], seen: list[tuple]
) -> Split:
    """A tag whose held-out combinations are phrased once each (a random phrasing) and whose seen combinations in
    every phrasing; ``phrase(*combination, phrasing)`` builds one prompt."""
    held_prompts = [phrase(*c, _phrasing(rng, tag)) for c in held]
    seen_prompts = [phrase(*c, j) for c in seen for j in range(len(ph.PHRASINGS[tag]))]
    return _split_tag(rng, held_prompts, seen_prompts, TEST_PER_TAG)


def _single_object(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    """Every shape is in both splits: 2 phrasings per shape in test, the other 2 in train."""
    test: list[dict] = []
    train: list[dict] = []
    for shape in SHAPES:
        order = rng.permutation(len(ph.PHRASINGS["single_object"]))
        test += [ph.single_object(shape, int(i)) for i in order[:2]]
        train += [ph.single_object(shape, int(i)) for i in order[2:]]
    return test, train


def _two_object(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    held = [(a, b) for p in ho["two_object"] for a, b in (p, p[::-1])]  # an unordered pair, in both orders
    seen = [c for c in itertools.permutations(SHAPES, 2) if c not in held]
    return _split_combinations(rng, "two_object", ph.two_object, held, seen)


def _counting(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    held = [(s, n) for n, s in ho["counting"]]
    seen = [(s, n) for n in range(COUNT_RANGE[0], COUNT_RANGE[1] + 1) for s in SHAPES if (s, n) not in held]
    return _split_combinations(rng, "counting", ph.counting, held, seen)


def _colors(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    held = list(ho["color_shape"])
    seen = [(c, s) for s in SHAPES for c in COLORS if (c, s) not in held]
    return _split_combinations(rng, "colors", ph.colors, held, seen)


def _position(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    # a held-out triple is held out in both wordings: "a star left of a circle" = "a circle right of a star"
    excluded = set(ho["position"]) | {(b, OPPOSITE[r], a) for a, r, b in ho["position"]}
    ordered = itertools.permutations(SHAPES, 2)
    seen = [(a, r, b) for a, b in ordered for r in RELATIONS if (a, r, b) not in excluded]
    return _split_combinations(rng, "position", ph.position, list(ho["position"]), seen)


def _color_attr(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    """Combinations (colour a, shape a, colour b, shape b), shapes and colours distinct; test holds some with one
    held-out (colour, shape) pair, train none. Too many combinations to phrase them all: one phrasing each."""
    held_cs = set(ho["color_shape"])
    combos = [
        (ca, a, cb, b)
        for a, b in itertools.permutations(SHAPES, 2)
        for ca, cb in itertools.permutations(COLORS, 2)
    ]
    with_held = [c for c in combos if ((c[0], c[1]) in held_cs) != ((c[2], c[3]) in held_cs)]
    without = [c for c in combos if (c[0], c[1]) not in held_cs and (c[2], c[3]) not in held_cs]
    test_combos = _pick(rng, with_held, COLOR_ATTR_TEST_WITH_HELD)
    test_combos += _pick(rng, without, TEST_PER_TAG - COLOR_ATTR_TEST_WITH_HELD)
    test = [ph.color_attr(*c, _phrasing(rng, "color_attr")) for c in test_combos]
    pool = [c for c in without if c not in set(test_combos)]
    train = [ph.color_attr(*c, _phrasing(rng, "color_attr")) for c in _pick(rng, pool, COLOR_ATTR_TRAIN)]
    return test, train


def _text(rng: np.random.Generator, ho: dict[str, list]) -> Split:
    """Test: the held-out numbers; train: every other number below 100 and random 3-digit ones."""
    test = [ph.text(x, _phrasing(rng, "text")) for x in ho["text"]]
    held_numbers = set(ho["text"])
    short = [str(i) for i in range(100) if str(i) not in held_numbers]
    long = [str(i) for i in range(100, 1000) if str(i) not in held_numbers]
    numbers = short + _pick(rng, long, TEXT_TRAIN - len(short))
    return test, [ph.text(x, _phrasing(rng, "text")) for x in numbers]


# One builder per tag, run in this order: they draw from one stream in turn, so the order is part of the splits.
_TAG_SPLITS: tuple[Callable[[np.random.Generator, dict[str, list]], Split], ...] = (
    _single_object, _two_object, _counting, _colors, _position, _color_attr, _text,
)  # fmt: skip


def generate_splits(seed: int = 0) -> dict[str, list[dict]]:
    """Build the train and test splits (lists of metadata dicts) deterministically from ``seed``."""
    ho = held_out(seed)
    rng = numpy_rng(seed + SPLIT_STREAM)
    train: list[dict] = []
    test: list[dict] = []
    for split_tag in _TAG_SPLITS:
        tag_test, tag_train = split_tag(rng, ho)
        test += tag_test
        train += tag_train
    order = {t: i for i, t in enumerate(TAGS)}
    train = sorted(train, key=lambda md: order[md["tag"]])
    return {"train": train, "test": sorted(test, key=lambda md: order[md["tag"]]), "iid": iid_split(train, seed)}


def iid_split(train: list[dict], seed: int = 0) -> list[dict]:
    """``IID_PER_TAG`` train prompts per tag (at most half of the tag's), drawn at random, in train order."""
    rng = numpy_rng(seed_from_ints(seed, IID_STREAM))
    out: list[dict] = []
    for tag in TAGS:
        rows = [md for md in train if md["tag"] == tag]
        picked = sorted(rng.permutation(len(rows))[: min(IID_PER_TAG, len(rows) // 2)].tolist())
        out += [rows[k] for k in picked]
    return out


def load_prompt_file(path: str | Path) -> list[dict]:
    """Read a JSONL file of metadata (one object per line, blank lines skipped), validating every line."""
    return read_checked(path, validate_metadata, "prompts")


def load_split(split: str) -> list[dict]:
    """The shipped 'train' or 'test' split as a list of metadata dicts."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return load_prompt_file(DATA_DIR / f"{split}.jsonl")


def write_prompt_file(path: str | Path, metadatas: list[dict]) -> None:
    """Write metadata dicts as JSONL (one compact object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(md) + "\n" for md in metadatas), encoding="utf-8")


def write_splits(out_dir: str | Path = DATA_DIR, seed: int = 0) -> dict[str, Path]:
    """Regenerate the split files into ``out_dir``; returns split -> path."""
    splits = generate_splits(seed)
    paths = {}
    for name, mds in splits.items():
        paths[name] = Path(out_dir) / f"{name}.jsonl"
        write_prompt_file(paths[name], mds)
    return paths
