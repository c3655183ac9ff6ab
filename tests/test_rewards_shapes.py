"""ShapesWorld verifier rewards on rendered ground truth, blank canvases and a mismatched prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visalign.rewards import RewardError, build_reward
from visalign.rewards.shapes import per_tag_means
from visalign.worlds.shapes.render import render_scene
from visalign.worlds.shapes.vocab import BACKGROUND

CIRCLE = {"tag": "single_object", "prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}
COUNT = {"tag": "counting", "prompt": "a photo of four circles", "include": [{"class": "circle", "count": 4}],
         "exclude": [{"class": "circle", "count": 5}]}  # fmt: skip
TWO = {"tag": "two_object", "prompt": "a photo of a circle and a triangle",
       "include": [{"class": "circle", "count": 1}, {"class": "triangle", "count": 1}]}  # fmt: skip


def _batch(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def test_strict_and_soft_scores() -> None:
    blank = np.empty((64, 64, 3), np.uint8)
    blank[:] = BACKGROUND
    metas = [CIRCLE, COUNT, TWO, CIRCLE, COUNT]
    arrays = [render_scene(CIRCLE, 0), render_scene(COUNT, 1), render_scene(TWO, 2), blank, render_scene(TWO, 3)]
    images = _batch(arrays)
    prompts = [m["prompt"] for m in metas]
    strict = build_reward("shapes_strict")(images, prompts, metas)
    soft = build_reward("shapes_soft")(images, prompts, metas)
    assert list(strict) == ["shapes_strict", "shapes_soft"] and list(soft) == ["shapes_soft", "shapes_strict"]
    # ground truth passes; a blank canvas fails; a circle + triangle scene is not "four circles"
    torch.testing.assert_close(strict["shapes_strict"], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(soft["shapes_strict"], strict["shapes_strict"])
    s = soft["shapes_soft"]
    assert torch.all(s[:3] == 1.0) and s[3] < 1.0 and s[4] < 1.0 and torch.all((s >= 0) & (s <= 1))


def test_per_tag_means_and_missing_metadata() -> None:
    scores = torch.tensor([1.0, 0.0, 0.5, 1.0])
    metas = [CIRCLE, COUNT, COUNT, TWO]
    assert per_tag_means(scores, metas) == {"single_object": 1.0, "two_object": 1.0, "counting": 0.25}
    with pytest.raises(RewardError, match="batch position 1 has no metadata"):
        build_reward("shapes_strict")(torch.rand(2, 3, 64, 64), ["a", "b"], [CIRCLE, {}])


def test_composite_of_verifier_and_jpeg_logs_every_component() -> None:
    reward = build_reward("composite", components=[{"name": "shapes_strict", "weight": 1.0},
                                                   {"name": "jpeg_compressibility", "weight": 0.01}])  # fmt: skip
    images = _batch([render_scene(CIRCLE, 5)])
    out = reward(images, [CIRCLE["prompt"]], [CIRCLE])
    assert list(out) == ["composite", "shapes_strict", "shapes_soft", "jpeg_compressibility"]
    torch.testing.assert_close(out["composite"], out["shapes_strict"] + 0.01 * out["jpeg_compressibility"])


def test_pairwise_win_rate_from_the_verifier() -> None:
    """Pref-GRPO win rates, computed by hand: two correct renders tie with each other and beat the blank and the
    half-right image; the half-right image (a circle, no triangle) beats the blank canvas."""
    blank = np.empty((64, 64, 3), np.uint8)
    blank[:] = BACKGROUND
    arrays = [render_scene(TWO, 0), blank, render_scene(TWO, 1), render_scene(CIRCLE, 2)]
    metas = [TWO] * 4
    reward = build_reward("shapes_pairwise")
    assert reward.groupwise
    out = reward(_batch(arrays), [TWO["prompt"]] * 4, metas)
    soft = out["shapes_soft"]
    assert soft[0] == soft[2] == 1.0 and soft[1] < soft[3] < 1.0  # the premise of the hand computation
    expected = torch.tensor([(0.5 + 1 + 1) / 3, 0.0, (0.5 + 1 + 1) / 3, 1 / 3])
    torch.testing.assert_close(out["shapes_pairwise"], expected)
    # a margin wider than every gap makes every pair a tie
    torch.testing.assert_close(build_reward("shapes_pairwise", tie_margin=1.0)(_batch(arrays), [TWO["prompt"]] * 4,
                               metas)["shapes_pairwise"], torch.full((4,), 0.5))  # fmt: skip
    with pytest.raises(RewardError, match="groupwise"):
        reward(_batch(arrays[:2]), [TWO["prompt"], CIRCLE["prompt"]], [TWO, CIRCLE])
