"""The graded ShapesWorld score: each credit by hand, 1 exactly on images the strict verdict accepts, below 1 on the
others, and the registered reward's components are the verifier's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visalign.rewards import build_reward
from visalign.worlds.shapes.classify import SHAPE_MIN_CORR
from visalign.worlds.shapes.graded import (
    SHAPE_FLOOR,
    Measured,
    color_credit,
    graded_batch,
    graded_objects,
    relation_credit,
    shape_credit,
)
from visalign.worlds.shapes.prompts import load_split
from visalign.worlds.shapes.render import render_scene
from visalign.worlds.shapes.verifier import verify_batch
from visalign.worlds.shapes.vocab import COLORS, SHAPES


def _measured(box=(0.0, 0.0, 10.0, 10.0), area=50, shapes=None, gaps=None) -> Measured:
    credits = {s: 0.0 for s in SHAPES} | (shapes or {})
    gap = np.full(len(COLORS), 40.0)
    for colour, value in (gaps or {}).items():
        gap[list(COLORS).index(colour)] = value
    return Measured(box, area, credits, gap)


def test_shape_and_colour_credits_by_hand():
    assert shape_credit(SHAPE_MIN_CORR) == 1.0 and shape_credit(SHAPE_FLOOR) == 0.0 and shape_credit(0.99) == 1.0
    assert shape_credit((SHAPE_FLOOR + SHAPE_MIN_CORR) / 2) == pytest.approx(0.5)
    assert color_credit(0.0) == 1.0 and color_credit(10.0) == pytest.approx(math.exp(-1))


def test_relation_credit_by_hand():
    a = (0.0, 0.0, 10.0, 10.0)
    # offset (-30, 0), shrunk by 0.1 x (10 + 10) = 2: (-28, 0) / 30 -> v = 0.933 along "left of": past the cut 0.5
    assert relation_credit(a, (30.0, 0.0, 40.0, 10.0), "left of") == 1.0
    assert relation_credit(a, (30.0, 0.0, 40.0, 10.0), "right of") == 0.0
    # offset -3, shrunk to -1: v = 1/3 -> credit (1/3) / 0.5 = 2/3
    assert relation_credit(a, (3.0, 0.0, 13.0, 10.0), "left of") == pytest.approx(2 / 3)
    assert relation_credit(a, a, "above") == 0.0  # concentric: no direction


def test_a_counted_coloured_requirement_takes_the_best_objects_by_hand():
    md = {"tag": "counting", "include": [{"class": "circle", "count": 2, "color": "red"}]}
    good = _measured(shapes={"circle": 1.0}, gaps={"red": 0.0})
    half = _measured(shapes={"circle": 0.5}, gaps={"red": 5.0})
    other = _measured(shapes={"square": 1.0}, gaps={"red": 0.0})
    # affinities 1, 0.5 exp(-0.5), 0: the two best, averaged over the two asked
    assert graded_objects([other, half, good], md) == pytest.approx((1.0 + 0.5 * math.exp(-0.5)) / 2)
    assert graded_objects([good], md) == pytest.approx(0.5)  # a missing object counts 0


def test_position_credit_uses_the_chosen_objects():
    md = {"tag": "position", "include": [{"class": "star", "count": 1}, {"class": "cross", "count": 1,
                                                                        "position": ["left of", 0]}]}
    star = _measured(box=(30.0, 0.0, 40.0, 10.0), shapes={"star": 1.0})
    cross = _measured(box=(3.0, 0.0, 13.0, 10.0), shapes={"cross": 1.0})
    # the cross is left of the star with credit (offset -27, shrunk to -25, v = 25/27 -> 1): credits 1, 1, 1
    assert graded_objects([star, cross], md) == pytest.approx(1.0)
    close = _measured(box=(27.0, 0.0, 37.0, 10.0), shapes={"cross": 1.0})  # offset -3: credit 2/3
    assert graded_objects([star, close], md) == pytest.approx((1 + 1 + 2 / 3) / 3)


def test_graded_is_one_exactly_where_the_strict_verdict_is_right():
    prompts = load_split("test")[::3]
    right = np.stack([render_scene(md, 7) for md in prompts])
    wrong = np.roll(right, 1, axis=0)  # each image with the next prompt's metadata
    for images in (right, wrong):
        verdicts, graded = graded_batch(images, prompts)
        strict = [v.correct for v in verify_batch(images, prompts)]
        assert [v.correct for v in verdicts] == strict
        assert all((g == 1.0) == ok and 0.0 <= g <= 1.0 for g, ok in zip(graded, strict, strict=True))
    assert not all(v.correct for v in verify_batch(wrong, prompts))


def test_the_reward_reports_strict_and_soft_beside_the_graded_score():
    prompts = load_split("test")[:6]
    images = torch.from_numpy(np.stack([render_scene(md, 3) for md in prompts])).permute(0, 3, 1, 2).float() / 255
    scores = build_reward("shapes_graded").score(images, [md["prompt"] for md in prompts], prompts)
    verdicts = verify_batch(images, prompts)
    assert scores["shapes_strict"].tolist() == [float(v.correct) for v in verdicts]
    torch.testing.assert_close(scores["shapes_soft"], torch.tensor([v.score for v in verdicts]))
    assert scores["shapes_graded"].shape == (6,)
