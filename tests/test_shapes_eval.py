"""GenEval layout, ShapesBench scoring, the image grid and the ``world`` / ``eval`` / ``demo`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visalign.cli import main
from visalign.errors import UserError
from visalign.eval.geneval_layout import read_folder, write_prompt_folder
from visalign.eval.shapesbench import format_table, score_folder, score_images
from visalign.report.grid import make_grid
from visalign.worlds.shapes import contact_sheet
from visalign.worlds.shapes.prompts import DATA_DIR, load_split
from visalign.worlds.shapes.render import render_scene
from visalign.worlds.shapes.vocab import BACKGROUND, TAGS


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The test split rendered by the CLI, 2 images per prompt."""
    out = tmp_path_factory.mktemp("gt")
    assert main(["world", "render", "--split", "test", "--images-per-prompt", "2", "--out", str(out)]) == 0
    return out


def test_render_writes_geneval_layout(rendered: Path) -> None:
    test = load_split("test")
    folders = sorted(p.name for p in rendered.iterdir() if p.is_dir())
    assert folders == [f"{i:05d}" for i in range(len(test))]
    md = json.loads((rendered / "00003" / "metadata.jsonl").read_text())
    assert md == test[3]
    assert sorted(p.name for p in (rendered / "00003" / "samples").iterdir()) == ["0000.png", "0001.png"]
    with Image.open(rendered / "00003" / "samples" / "0001.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    with Image.open(rendered / "contact_sheet.png") as sheet:
        assert sheet.width > 10 * 64 and sheet.height > 7 * 64


def test_eval_scores_ground_truth_about_one(rendered: Path, capsys) -> None:
    assert main(["eval", str(rendered)]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "results.json" in out
    results = json.loads((rendered / "results.json").read_text())
    assert set(results["per_tag"]) == set(TAGS)
    assert results["overall"] >= 0.98 and results["soft"] >= 0.98
    assert results["n_images"] == 140 and len(results["images"]) == 140
    row = results["images"][0]
    assert {"index", "sample", "tag", "prompt", "correct", "score", "reason"} <= set(row)


def test_overall_is_unweighted_mean_of_tags() -> None:
    """3 counting images (1 correct) and 1 colors image (correct): overall = (1/3 + 1) / 2, not 2/4."""
    count = {
        "tag": "counting",
        "prompt": "two circles",
        "include": [{"class": "circle", "count": 2}],
        "exclude": [{"class": "circle", "count": 3}],
    }
    colour = {
        "tag": "colors",
        "prompt": "a red star",
        "include": [{"class": "star", "count": 1, "color": "red"}],
    }
    one_circle = {**count, "include": [{"class": "circle", "count": 1}], "exclude": []}
    images = [
        render_scene(count, 1),
        render_scene(one_circle, 2),
        render_scene(one_circle, 3),
        render_scene(colour, 4),
    ]
    results = score_images(images, [count, count, count, colour])
    assert results["per_tag"] == {"counting": pytest.approx(1 / 3), "colors": 1.0}
    assert results["overall"] == pytest.approx((1 / 3 + 1) / 2)
    assert results["n_images"] == 4 and 0 < results["soft"] < 1
    assert format_table(results).row_count == 3


def _bad_folder(tmp_path: Path) -> Path:
    md = load_split("test")[0]
    write_prompt_folder(tmp_path, 0, md, [render_scene(md, 0)])
    return tmp_path


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: (d / "00000/samples/0000.png").write_bytes(b"not a png"), "00000/samples/0000.png"),
        (lambda d: (d / "00000/samples/0000.png").unlink(), "00000/samples: no PNG images"),
        (
            lambda d: (d / "00000/metadata.jsonl").write_text('{"tag": "colors", "prompt": '),
            "metadata.jsonl:1: malformed JSON",
        ),
        (
            lambda d: (d / "00000/metadata.jsonl").write_text('{"tag": "poetry", "prompt": "x"}\n'),
            "unknown tag 'poetry'",
        ),
        (
            lambda d: (d / "00000/metadata.jsonl").write_text(
                '{"tag": "colors", "prompt": "x", "include": [{"class": "dog", "count": 1}]}\n'
            ),
            "unknown class 'dog'",
        ),
        (
            lambda d: (d / "00000/metadata.jsonl").write_text(
                '{"tag": "colors", "prompt": "x", "include": [{"class": "star", "count": 1, "color": "teal"}]}\n'
            ),
            "unknown color 'teal'",
        ),
        (lambda d: (d / "00000/metadata.jsonl").unlink(), "metadata.jsonl: missing"),
    ],
)
def test_eval_bad_input_is_one_clear_line(tmp_path: Path, capsys, damage, needle: str) -> None:
    folder = _bad_folder(tmp_path)
    damage(folder)
    assert main(["eval", str(folder)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.startswith("error: ")
    assert "00000" in err  # names the file at fault
    assert len(err.strip().splitlines()) == 1


def test_eval_rejects_a_folder_without_prompts(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "no prompt folders" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_read_folder_round_trip(tmp_path: Path) -> None:
    mds = load_split("test")[:3]
    for i, md in enumerate(mds):
        write_prompt_folder(tmp_path, i, md, [render_scene(md, i), Image.fromarray(render_scene(md, i + 10))])
    got = list(read_folder(tmp_path))
    assert [g[0] for g in got] == [0, 1, 2] and [g[1] for g in got] == mds
    assert all(len(g[2]) == 2 for g in got)
    with pytest.raises(UserError):
        score_folder(tmp_path / "missing")


def test_world_prompts_regenerates_the_shipped_files(tmp_path: Path, capsys) -> None:
    assert main(["world", "prompts", "--out", str(tmp_path)]) == 0
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_text() == (DATA_DIR / f"{split}.jsonl").read_text()
    assert main(["world", "prompts", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert (tmp_path / "test.jsonl").read_text() != (DATA_DIR / "test.jsonl").read_text()
    assert "test: 70 prompts" in capsys.readouterr().out


def test_demo_renders_and_scores(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--world", "--out", str(tmp_path), "--images-per-prompt", "1"]) == 0
    out = capsys.readouterr().out
    assert "contact_sheet.png" in out and "overall" in out
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["overall"] >= 0.98 and results["n_images"] == 70


def test_grid_geometry_and_captions() -> None:
    tiles = [np.full((16, 20, 3), 40 * k, dtype=np.uint8) for k in range(5)]
    grid = make_grid(tiles, ncols=3, pad=2)
    assert grid.size == (3 * (20 + 2) + 2, 2 * (16 + 2) + 2)
    assert grid.getpixel((2 + 22 * 1, 2)) == (40, 40, 40)  # second tile, top-left pixel
    captioned = make_grid(tiles, labels=[f"t{k}" for k in range(5)], ncols=5, scale=2)
    assert captioned.width == 5 * (40 + 4) + 4 and captioned.height > 32 + 8
    with pytest.raises(ValueError):
        make_grid(tiles, labels=["only one"])
    sheet = contact_sheet([np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)] * 3, ["a", "b", "c"])
    assert sheet.width >= 3 * 128


def test_demo_runs_the_quickstart_recipe_and_reports_bad_overrides(capsys) -> None:
    # The quickstart recipe resolves; a mistyped override is a one-line error naming the closest key.
    assert main(["demo", "train.iteratons=1"]) == 2
    assert "did you mean 'train.iterations'" in capsys.readouterr().err
