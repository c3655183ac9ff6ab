"""ShapesWorld vocabulary, prompt splits, metadata validation, relations and the renderer."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pytest

from visalign.errors import UserError
from visalign.worlds.shapes import font, vocab
from visalign.worlds.shapes.classify import srgb_to_lab
from visalign.worlds.shapes.prompts import DATA_DIR, generate_splits, load_prompt_file, load_split
from visalign.worlds.shapes.relations import relations
from visalign.worlds.shapes.render import draw_scene, render_scene
from visalign.worlds.shapes.scene import Scene, SceneObject, sample_scene

GENEVAL_COLORS = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}
GENEVAL_TAGS = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}


# --- vocabulary ---------------------------------------------------------------------------------


def test_vocabulary_sizes_and_geneval_names() -> None:
    assert len(vocab.SHAPES) >= 5 and {"circle", "square", "triangle"} <= set(vocab.SHAPES)
    assert len(vocab.COLORS) >= 8 and set(vocab.COLORS) <= GENEVAL_COLORS
    assert GENEVAL_TAGS | {"text"} == set(vocab.TAGS)
    assert set(font.DIGITS) == set("0123456789")


def test_colours_are_far_apart_and_far_from_the_background() -> None:
    lab = srgb_to_lab(np.array(list(vocab.COLORS.values())) / 255.0)
    bg = srgb_to_lab(np.array(vocab.BACKGROUND) / 255.0)
    pair = np.linalg.norm(lab[:, None] - lab[None], axis=-1)[np.triu_indices(len(lab), 1)]
    assert pair.min() > 40  # CIELAB units; a just-noticeable difference is about 2
    assert np.linalg.norm(lab - bg, axis=-1).min() > 40


def test_digit_glyphs_are_distinct_and_fill_their_cell() -> None:
    glyphs = {d: font.glyph(d) for d in font.DIGITS}
    for d, g in glyphs.items():
        assert g.shape == (font.GLYPH_H, font.GLYPH_W)
        assert g.any(axis=0).all() and g.any(axis=1).all(), f"glyph {d} does not touch every side"
    for a, b in itertools.combinations(font.DIGITS, 2):
        assert (glyphs[a] != glyphs[b]).sum() >= 3, (a, b)


# --- prompt splits --------------------------------------------------------------------------------


def _color_shape_pairs(mds: Iterable[dict]) -> set[tuple[str, str]]:
    return {(r["color"], r["class"]) for md in mds for r in md.get("include", []) if r.get("color")}


def test_shipped_splits_are_what_the_generator_produces() -> None:
    fresh = generate_splits(0)
    for split in ("train", "test", "iid"):
        assert load_split(split) == fresh[split]
        shipped = (DATA_DIR / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in shipped] == fresh[split]


def test_the_iid_split_is_drawn_from_train_per_tag() -> None:
    from visalign.worlds.shapes.prompts import IID_PER_TAG

    train, iid = load_split("train"), load_split("iid")
    assert all(md in train for md in iid) and len({md["prompt"] for md in iid}) == len(iid)
    per_tag_train = Counter(md["tag"] for md in train)
    assert Counter(md["tag"] for md in iid) == {t: min(IID_PER_TAG, n // 2) for t, n in per_tag_train.items()}
    assert generate_splits(1)["iid"] != iid  # seeded


def test_split_sizes_and_disjoint_prompts() -> None:
    train, test = load_split("train"), load_split("test")
    assert Counter(md["tag"] for md in test) == {t: 10 for t in vocab.TAGS}
    assert len(train) >= 300 and set(md["tag"] for md in train) == set(vocab.TAGS)
    assert not {md["prompt"] for md in train} & {md["prompt"] for md in test}
    assert len({md["prompt"] for md in train}) == len(train)
    words = (
        set(vocab.SHAPES) | set(vocab.PLURALS.values()) | set(vocab.COLORS) | set(vocab.NUMBER_WORDS.values())
    )
    words |= {"left", "right", "above", "below", "a", "an"}
    for tag in vocab.TAGS:  # several phrasings per tag: prompts with the content words masked still differ
        patterns = {
            " ".join("#" if w in words or w.isdigit() else w for w in md["prompt"].split())
            for md in train + test
            if md["tag"] == tag
        }
        assert len(patterns) >= 3, (tag, patterns)


def test_held_out_combinations_occur_in_test_only() -> None:
    train, test = load_split("train"), load_split("test")
    train_pairs = _color_shape_pairs(train)
    for tag in ("colors", "color_attr"):
        unseen = _color_shape_pairs(md for md in test if md["tag"] == tag) - train_pairs
        assert len(unseen) >= 3, tag

    def counts(mds: Iterable[dict]) -> set[tuple[int, str]]:
        return {
            (md["include"][0]["count"], md["include"][0]["class"]) for md in mds if md["tag"] == "counting"
        }

    assert len(counts(test) - counts(train)) >= 3

    def pairs(mds: Iterable[dict]) -> set[frozenset[str]]:
        return {frozenset(r["class"] for r in md["include"]) for md in mds if md["tag"] == "two_object"}

    def numbers(mds: Iterable[dict]) -> set[str]:
        return {md["text"] for md in mds if md["tag"] == "text"}

    assert len(pairs(test) - pairs(train)) >= 2
    assert numbers(test).isdisjoint(numbers(train))


def test_split_metadata_follows_geneval_format() -> None:
    for md in load_split("test") + load_split("train"):
        inc = md["include"]
        if md["tag"] == "counting":
            assert md["exclude"] == [{"class": inc[0]["class"], "count": inc[0]["count"] + 1}]
            assert 2 <= inc[0]["count"] <= 4
        if md["tag"] == "position":  # "a A <rel> a B": B first, the relation on A pointing at B
            a, b = inc[1]["class"], inc[0]["class"]
            assert inc[1]["position"][1] == 0
            assert md["prompt"].index(a) < md["prompt"].rindex(b)
        if md["tag"] == "text":
            assert md["text"] in md["prompt"] and 1 <= len(md["text"]) <= 3


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"tag": "colors", "prompt": "x", "include": [', "malformed JSON"),
        (
            '{"tag": "dance", "prompt": "x", "include": [{"class": "circle", "count": 1}]}',
            "unknown tag 'dance'",
        ),
        (
            '{"tag": "colors", "prompt": "x", "include": [{"class": "hexagon", "count": 1}]}',
            "unknown class 'hexagon'",
        ),
        (
            '{"tag": "colors", "prompt": "x", "include": [{"class": "star", "count": 1, "color": "teal"}]}',
            "unknown color 'teal'",
        ),
        ('{"tag": "text", "prompt": "x", "include": [], "text": "12a"}', "digits"),
        (
            '{"tag": "position", "prompt": "x", "include": [{"class": "star", "count": 1, "position": ["near", 0]}]}',
            "position",
        ),
    ],
)
def test_bad_prompt_lines_name_file_and_line(tmp_path, line: str, needle: str) -> None:
    good = json.dumps(load_split("test")[0])
    path = tmp_path / "prompts.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError) as err:
        load_prompt_file(path)
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


# --- relations (GenEval's rule) -------------------------------------------------------------------


def test_relations_follow_geneval_rule() -> None:
    left, right = (0, 20, 10, 30), (30, 20, 40, 30)
    assert relations(left, right) == {"left of"}
    assert relations(right, left) == {"right of"}
    assert relations((20, 0, 30, 10), (20, 40, 30, 50)) == {"above"}
    assert relations((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}  # a diagonal holds two
    assert relations((10, 10, 20, 20), (11, 10, 21, 20)) == set()  # within the margin: no relation
    # a 45-degree offset is "left of" only if the horizontal part dominates after the margin
    assert "left of" not in relations((0, 0, 10, 10), (5, 30, 15, 40))


# --- renderer -------------------------------------------------------------------------------------


def test_render_is_deterministic_and_sized() -> None:
    md = load_split("test")[25]
    a, b, c = render_scene(md, 7), render_scene(md, 7), render_scene(md, 8)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert render_scene(md, 7, size=128).shape == (128, 128, 3)


def test_draw_scene_puts_objects_where_asked_with_soft_edges() -> None:
    red, blue = np.array(vocab.COLORS["red"]), np.array(vocab.COLORS["blue"])
    scene = Scene(
        64, (SceneObject("circle", "red", 16.0, 32.0, 8.0), SceneObject("square", "blue", 46.0, 20.0, 7.0))
    )
    img = draw_scene(scene).astype(int)
    assert np.array_equal(img[32, 16], red) and np.array_equal(img[20, 46], blue)
    assert np.array_equal(img[5, 5], vocab.BACKGROUND) and np.array_equal(img[32, 30], vocab.BACKGROUND)
    # anti-aliasing: along the circle's rim (length 2 pi r) most pixels are a blend of red and background
    left = img[:, :32].reshape(-1, 3)
    mixed = (np.abs(left - red).sum(-1) > 0) & (np.abs(left - np.array(vocab.BACKGROUND)).sum(-1) > 0)
    assert mixed.sum() > np.pi * 8
    # area: the number of red-dominated pixels is close to pi r^2
    redness = (np.abs(img - red).sum(-1) < np.abs(img - np.array(vocab.BACKGROUND)).sum(-1)).sum()
    assert abs(redness - np.pi * 64) < 0.1 * np.pi * 64


def test_sampled_scenes_satisfy_their_metadata() -> None:
    """Counts, colours, no overlaps, inside the image, relations: for every test prompt and 5 seeds."""
    for md in load_split("test"):
        for seed in range(5):
            scene = sample_scene(md, np.random.default_rng(seed), 64)
            if md["tag"] == "text":
                assert scene.text.text == md["text"] and not scene.objects
                x0, y0, x1, y1 = scene.text.bbox()
                assert x0 >= 0 and y0 >= 0 and x1 <= 64 and y1 <= 64
                continue
            objs = scene.objects
            assert len(objs) == sum(r["count"] for r in md["include"]) <= vocab.MAX_OBJECTS
            for r in md["include"]:
                mine = [o for o in objs if o.shape == r["class"]]
                assert len(mine) >= r["count"]
                if r.get("color"):
                    assert sum(o.color == r["color"] for o in mine) >= r["count"]
            for o in objs:
                x0, y0, x1, y1 = o.bbox()
                assert x0 >= 0 and y0 >= 0 and x1 <= 64 and y1 <= 64
            for p, q in itertools.combinations(objs, 2):
                a, b = p.bbox(), q.bbox()
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "objects overlap"
            for r in md["include"]:
                if r.get("position"):
                    rel, j = r["position"]
                    (a,) = [o for o in objs if o.shape == r["class"]]
                    (b,) = [o for o in objs if o.shape == md["include"][j]["class"]]
                    assert rel in relations(a.bbox(), b.bbox())


def test_scene_sizes_vary_and_colours_cover_the_palette() -> None:
    md = {"tag": "single_object", "prompt": "a star", "include": [{"class": "star", "count": 1}]}
    scenes = [sample_scene(md, np.random.default_rng(s), 64) for s in range(200)]
    radii = [s.objects[0].radius for s in scenes]
    assert max(radii) - min(radii) > 4
    assert {s.objects[0].color for s in scenes} == set(vocab.COLORS)


# --- degradations used to stress the verifier ---------------------------------------------------


def test_degradations_have_the_stated_strength() -> None:
    from visalign.worlds.shapes.augment import Degradation, degrade, gaussian_blur

    delta = np.zeros((41, 41, 1), dtype=np.float64)
    delta[20, 20] = 1.0
    psf = gaussian_blur(delta, 1.0)[..., 0]
    assert psf.sum() == pytest.approx(1.0)
    xs = np.arange(41) - 20
    assert np.sqrt((psf.sum(axis=0) * xs**2).sum()) == pytest.approx(1.0, abs=0.02)  # std = sigma

    rng = np.random.default_rng(0)
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    noisy = degrade(grey, Degradation(noise=0.05), rng).astype(float) / 255
    assert noisy.std() == pytest.approx(0.05, rel=0.05)
    for _ in range(20):
        gains = degrade(grey, Degradation(jitter=0.08), rng)[0, 0] / 128.0
        assert np.all(np.abs(gains - 1) <= 0.08 + 1 / 128)
    img = render_scene(load_split("test")[20], 0)
    jpg = degrade(img, Degradation(quality=50), rng)
    assert jpg.shape == img.shape and not np.array_equal(jpg, img)
    assert np.abs(jpg.astype(int) - img).mean() < 8  # lossy, not destroyed
