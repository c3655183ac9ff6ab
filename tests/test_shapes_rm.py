"""The learned ShapesWorld reward model: shipped weights, gradients, batch invariance, ranking, training, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from visalign.cli import main
from visalign.errors import UserError
from visalign.eval.geneval_layout import write_prompt_folder
from visalign.rewards import build_reward
from visalign.rewards.shapes_rm import DEFAULT_PATH
from visalign.worlds.shapes.mismatch import corrupt
from visalign.worlds.shapes.prompts import load_split
from visalign.worlds.shapes.render import render_scene


def _images(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def reward():  # noqa: ANN201
    return build_reward("shapes_rm")  # the shipped folder, through the path users take


@pytest.fixture(scope="module")
def test_prompts() -> list[dict]:
    prompts = load_split("test")
    return [prompts[i] for i in range(0, len(prompts), 5)]  # 14 prompts, every tag


def test_shipped_weights_load_and_score(reward, test_prompts: list[dict]) -> None:  # noqa: ANN001
    assert reward.differentiable and not reward.groupwise and reward.output_range == (0.0, 1.0)
    assert sum(f.stat().st_size for f in DEFAULT_PATH.iterdir()) <= 5 * 1024 * 1024
    assert (DEFAULT_PATH / "README.md").is_file()
    images = _images([render_scene(md, i) for i, md in enumerate(test_prompts)])
    out = reward(images, [md["prompt"] for md in test_prompts], test_prompts)
    assert list(out) == ["shapes_rm", "shapes_rm_strict"]
    for v in out.values():
        assert v.shape == (len(test_prompts),) and torch.all((v >= 0) & (v <= 1))


def test_gradients_flow_to_the_image_at_any_size(reward, test_prompts: list[dict]) -> None:  # noqa: ANN001
    for size in (64, 96):
        images = torch.rand(3, 3, size, size, requires_grad=True)
        reward(images, [md["prompt"] for md in test_prompts[:3]])["shapes_rm"].sum().backward()
        assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())  # the reward model itself stays frozen


def test_batch_invariance(reward, test_prompts: list[dict]) -> None:  # noqa: ANN001
    images = _images([render_scene(md, 100 + i) for i, md in enumerate(test_prompts)])
    prompts = [md["prompt"] for md in test_prompts]
    whole = reward(images, prompts)["shapes_rm"]
    single = torch.cat(
        [reward(images[i : i + 1], prompts[i : i + 1])["shapes_rm"] for i in range(len(prompts))]
    )
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-5)


def test_ranks_correct_pairs_above_mismatched_ones(reward, test_prompts: list[dict]) -> None:  # noqa: ANN001
    """Unseen (test-split) prompts: the ground-truth scene beats a scene of a corrupted prompt / another task."""
    rng = np.random.default_rng(0)
    prompts = [md["prompt"] for md in test_prompts]
    right = reward(_images([render_scene(md, 7 + i) for i, md in enumerate(test_prompts)]), prompts)[
        "shapes_rm"
    ]
    wrong = _images([render_scene(corrupt(md, rng)[1], 7 + i) for i, md in enumerate(test_prompts)])
    wrong = reward(wrong, prompts)["shapes_rm"]
    # another task's scene: a number for object prompts, objects for number prompts
    other = [test_prompts[(i + len(test_prompts) // 2) % len(test_prompts)] for i in range(len(test_prompts))]
    other = reward(_images([render_scene(md, 50 + i) for i, md in enumerate(other)]), prompts)["shapes_rm"]
    assert (right > wrong).float().mean() >= 0.8, (right, wrong)
    assert (right > other).float().mean() >= 0.9, (right, other)
    assert right.mean() > wrong.mean() + 0.1 and right.mean() > other.mean() + 0.2


def test_unknown_word_is_a_clear_error(reward) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match="'giraffe'|giraffe"):
        reward(torch.rand(1, 3, 64, 64), ["a photo of a giraffe"])


def test_train_command_end_to_end_and_bad_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = tmp_path / "generated"
    for i, md in enumerate(load_split("train")[::300]):
        write_prompt_folder(gen, i, md, [render_scene(md, i), render_scene(md, i + 1)])
    out = tmp_path / "rm"
    args = ["rewards", "train-shapes-rm", "--out", str(out), "--synthetic", "40", "--eval-synthetic", "16",
            "--steps", "2", "--batch-size", "8", "--generated", str(gen), "--holdout", "0.5", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    assert {"model.safetensors", "config.json", "README.md", "metrics.json"} <= {
        p.name for p in out.iterdir()
    }
    trained = build_reward("shapes_rm", path=out)
    scores = trained(torch.rand(2, 3, 64, 64), ["a red star", "the number 12"])["shapes_rm"]
    assert scores.shape == (2,)

    with pytest.raises(UserError, match="no such reward-model folder"):
        build_reward("shapes_rm", path=tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"model\.safetensors.*corrupt"):
        build_reward("shapes_rm", path=broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"model\.safetensors: missing"):
        build_reward("shapes_rm", path=broken)
    shutil.copy(out / "model.safetensors", broken / "model.safetensors")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json: corrupt JSON"):
        build_reward("shapes_rm", path=broken)
    capsys.readouterr()
    assert (
        main(["rewards", "train-shapes-rm", "--out", str(tmp_path / "x"), "--generated", str(tmp_path)]) == 2
    )
    assert "no prompt folders" in capsys.readouterr().err
