"""Verifier-labelled (image, prompt) pairs, and the synthetic ones (rendered, mismatched, shuffled, extra).

``label`` verifies images against prompt metadata (``verify_batch``): the targets are the verifier's soft
score and strict verdict on that exact pair. ``synthetic_pairs`` draws the four synthetic sources in the
proportions of ``SYNTHETIC_MIX`` and degrades the images at random (see ``_degrade``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visalign.rewards.shapes_rm_train.streams import SCENE_STRIDE
from visalign.seeding import numpy_rng

SOURCES = ("rendered", "mismatched", "shuffled", "extra", "generated")
SYNTHETIC_MIX = {"rendered": 0.3, "mismatched": 0.3, "shuffled": 0.25, "extra": 0.15}
# the harder degradations: past the limits the verifier is specified for, where blurry generated images live
HARSH = {"sigma": 2.5, "noise": 0.15, "quality": 20, "jitter": 0.25}
_CHUNK = 512  # synthetic pairs rendered (and verified) at a time


@dataclass
class PairSet:
    """Labelled pairs: uint8 images [N, S, S, 3], their metadata, verifier soft/strict labels and sources."""

    images: np.ndarray
    metadata: list[dict]
    soft: np.ndarray
    strict: np.ndarray
    source: list[str]

    def __len__(self) -> int:
        return len(self.metadata)

    @staticmethod
    def empty(size: int = 64) -> PairSet:
        return PairSet(
            np.zeros((0, size, size, 3), np.uint8), [], np.zeros(0, np.float32), np.zeros(0, np.float32), []
        )

    @staticmethod
    def concat(parts: Sequence[PairSet]) -> PairSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return PairSet.empty()
        return PairSet(
            np.concatenate([p.images for p in parts]),
            [m for p in parts for m in p.metadata],
            np.concatenate([p.soft for p in parts]),
            np.concatenate([p.strict for p in parts]),
            [s for p in parts for s in p.source],
        )

    def subset(self, idx: Sequence[int] | np.ndarray) -> PairSet:
        idx = np.asarray(idx, dtype=np.int64)
        return PairSet(
            self.images[idx],
            [self.metadata[i] for i in idx],
            self.soft[idx],
            self.strict[idx],
            [self.source[i] for i in idx],
        )

    def of_source(self, source: str) -> PairSet:
        """The pairs from one source."""
        return self.subset([i for i, s in enumerate(self.source) if s == source])

    def counts(self) -> dict[str, int]:
        return {s: self.source.count(s) for s in SOURCES if s in self.source}


def label(images: np.ndarray, metadata: list[dict], source: Sequence[str]) -> PairSet:
    """Verify ``images`` against ``metadata`` and wrap the verdicts as a ``PairSet``."""
    from visalign.worlds.shapes.verifier import verify_batch

    if not len(metadata):
        return PairSet.empty(images.shape[1] if images.ndim == 4 else 64)
    verdicts = verify_batch(images, metadata)
    soft = np.array([v.score for v in verdicts], dtype=np.float32)
    strict = np.array([1.0 if v.correct else 0.0 for v in verdicts], dtype=np.float32)
    return PairSet(images, list(metadata), soft, strict, list(source))


def by_tag(prompts: Sequence[dict]) -> dict[str, list[int]]:
    """The indices of ``prompts`` grouped by their tag (in order)."""
    out: dict[str, list[int]] = {}
    for i, md in enumerate(prompts):
        out.setdefault(md.get("tag", ""), []).append(i)
    return out


def _harsh_degradation(rng: np.random.Generator) -> Any:
    from visalign.worlds.shapes.augment import Degradation

    return Degradation(
        sigma=float(rng.uniform(0.5, HARSH["sigma"])),
        noise=float(rng.uniform(0.0, HARSH["noise"])),
        quality=int(rng.integers(HARSH["quality"], 96)),
        jitter=float(rng.uniform(0.0, HARSH["jitter"])),
    )


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """40% of images within the verifier's specified limits (``random_degradation``), 20% ``HARSH``."""
    from visalign.worlds.shapes.augment import degrade, random_degradation

    u = rng.random()
    if u < 0.4:
        return degrade(image, random_degradation(rng), rng)
    if u < 0.6:
        return degrade(image, _harsh_degradation(rng), rng)
    return image


def _with_extra_object(md: dict, rng: np.random.Generator) -> dict | None:
    """The scene metadata of ``md`` plus one random object, or None when the scene is full / a number."""
    from visalign.worlds.shapes.vocab import COLORS, MAX_OBJECTS, SHAPES

    if md.get("tag") == "text" or "text" in md:
        return None
    inc = md.get("include", [])
    if sum(int(r["count"]) for r in inc) >= MAX_OBJECTS:
        return None
    out = copy.deepcopy(md)
    out.pop("exclude", None)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    out["include"] = [*out.get("include", []), {"class": shape, "count": 1, "color": color}]
    return out


def _scene_of(
    kind: str, md: dict, prompts: list[dict], tags: dict[str, list[int]], rng: np.random.Generator
) -> tuple[str, dict]:
    """(source, scene metadata) of a pair of source ``kind`` for prompt ``md`` (an impossible extra object
    becomes a mismatched scene)."""
    from visalign.worlds.shapes.mismatch import corrupt

    if kind == "mismatched":
        return kind, corrupt(md, rng)[1]
    if kind == "shuffled":  # another prompt's scene: of the same tag 70% of the time
        pool = tags[md.get("tag", "")] if rng.random() < 0.7 else range(len(prompts))
        return kind, prompts[int(rng.choice(list(pool)))]
    if kind == "extra":
        scene_md = _with_extra_object(md, rng)
        return ("mismatched", corrupt(md, rng)[1]) if scene_md is None else (kind, scene_md)
    return kind, md


def synthetic_pairs(prompts: list[dict], n: int, seed: int, size: int = 64, progress: Any = None) -> PairSet:
    """``n`` verifier-labelled synthetic pairs over ``prompts`` (in the proportions of ``SYNTHETIC_MIX``)."""
    from visalign.worlds.shapes.render import render_scene

    rng = numpy_rng(seed)
    tags = by_tag(prompts)
    kinds, weights = zip(*SYNTHETIC_MIX.items(), strict=True)
    parts: list[PairSet] = []
    task = progress.add_task("synthetic pairs", total=n) if progress is not None else None
    for start in range(0, n, _CHUNK):
        images, metas, sources = [], [], []
        for k in range(start, min(n, start + _CHUNK)):
            md = prompts[int(rng.integers(len(prompts)))]
            kind = kinds[int(rng.choice(len(kinds), p=np.asarray(weights) / sum(weights)))]
            kind, scene_md = _scene_of(kind, md, prompts, tags, rng)
            image = render_scene(scene_md, seed * SCENE_STRIDE + k, size=size)
            images.append(_degrade(image, rng))
            metas.append(md)
            sources.append(kind)
        parts.append(label(np.stack(images), metas, sources))
        if progress is not None:
            progress.update(task, advance=len(metas))
    return PairSet.concat(parts)
