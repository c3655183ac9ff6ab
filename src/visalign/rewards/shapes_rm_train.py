"""Training data and training loop of the learned ShapesWorld reward model (``visalign rewards train-shapes-rm``).

Every training pair is an (image, prompt metadata) pair labelled by the ShapesWorld verifier
(``verify_batch``): the target is the verifier's soft score and its strict verdict on that exact pair.
The pairs come from five sources:

* ``rendered``: a ground-truth scene of the prompt (``render_scene``), so a correct pair;
* ``mismatched``: a scene of a corrupted prompt (``mismatch.corrupt``: wrong colour, count, relation,
  shape, digit, a missing object) scored against the original prompt;
* ``shuffled``: the scene of another prompt (of the same tag 70% of the time) scored against this prompt;
* ``extra``: the prompt's scene with one more random object (which fails counting prompts and passes others);
* ``generated``: images sampled from a generator (GenEval-layout folders written by ``visalign sample``, or
  sampled by the command from ``--model``), each scored against its own prompt and once against another
  prompt of the same tag.

Synthetic images are degraded at random: 40% within the limits the verifier is specified for
(``augment.random_degradation``), 20% harder (blur up to 2.5 px, noise up to 0.15, colour gains up to
+-25%, JPEG quality 20-95), which is where the verifier itself starts to fail and where blurry generated
images live. Training prompts come from the ``train`` split; held-out evaluation uses the ``test`` split
(unseen prompts and compositions) and held-out generated images.

The loss is binary cross-entropy of the soft logit against the soft score plus ``strict_weight`` times
binary cross-entropy of the strict logit against the strict verdict; AdamW with a cosine schedule.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visalign.errors import UserError
from visalign.rewards.shapes_rm_model import RMConfig, ShapesRM, load_rm, save_rm

SOURCES = ("rendered", "mismatched", "shuffled", "extra", "generated")
SYNTHETIC_MIX = {"rendered": 0.3, "mismatched": 0.3, "shuffled": 0.25, "extra": 0.15}
HARSH = {"sigma": 2.5, "noise": 0.15, "quality": 20, "jitter": 0.25}


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


def _harsh_degradation(rng: np.random.Generator) -> Any:
    from visalign.worlds.shapes.augment import Degradation

    return Degradation(
        sigma=float(rng.uniform(0.5, HARSH["sigma"])),
        noise=float(rng.uniform(0.0, HARSH["noise"])),
        quality=int(rng.integers(HARSH["quality"], 96)),
        jitter=float(rng.uniform(0.0, HARSH["jitter"])),
    )


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def synthetic_pairs(prompts: list[dict], n: int, seed: int, size: int = 64, progress: Any = None) -> PairSet:
    """``n`` verifier-labelled synthetic pairs over ``prompts`` (mix ``SYNTHETIC_MIX``, see the module docstring)."""
    from visalign.worlds.shapes.mismatch import corrupt
    from visalign.worlds.shapes.render import render_scene

    rng = np.random.default_rng(seed)
    by_tag: dict[str, list[int]] = {}
    for i, md in enumerate(prompts):
        by_tag.setdefault(md.get("tag", ""), []).append(i)
    kinds, weights = zip(*SYNTHETIC_MIX.items(), strict=True)
    parts: list[PairSet] = []
    chunk = 512
    task = progress.add_task("synthetic pairs", total=n) if progress is not None else None
    for start in range(0, n, chunk):
        images, metas, sources = [], [], []
        for k in range(start, min(n, start + chunk)):
            md = prompts[int(rng.integers(len(prompts)))]
            kind = kinds[int(rng.choice(len(kinds), p=np.asarray(weights) / sum(weights)))]
            scene_md: dict | None = md
            if kind == "mismatched":
                scene_md = corrupt(md, rng)[1]
            elif kind == "shuffled":
                pool = by_tag[md.get("tag", "")] if rng.random() < 0.7 else range(len(prompts))
                scene_md = prompts[int(rng.choice(list(pool)))]
            elif kind == "extra":
                scene_md = _with_extra_object(md, rng)
                if scene_md is None:
                    kind, scene_md = "mismatched", corrupt(md, rng)[1]
            image = render_scene(scene_md, seed * 1_000_003 + k, size=size)
            images.append(_degrade(image, rng))
            metas.append(md)
            sources.append(kind)
        parts.append(label(np.stack(images), metas, sources))
        if progress is not None:
            progress.update(task, advance=len(metas))
    return PairSet.concat(parts)


def read_generated(folders: Sequence[str | Path], size: int = 64) -> tuple[np.ndarray, list[dict]]:
    """Every sample of GenEval-layout ``folders`` (``visalign sample`` output) as uint8 images + metadata."""
    from visalign.eval.geneval_layout import load_image, read_folder

    images, metas = [], []
    for folder in folders:
        for _, md, paths in read_folder(folder):
            if "include" not in md and "text" not in md:
                raise UserError(
                    f"{folder}: prompt {md.get('prompt')!r} has no ShapesWorld metadata to verify against"
                )
            for p in paths:
                im = load_image(p)
                if im.shape[:2] != (size, size):
                    from PIL import Image

                    im = np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                images.append(im)
                metas.append(md)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), []
    return np.stack(images), metas


def sample_generated(
    model: str, prompts: list[dict], images_per_prompt: int, seed: int, size: int = 64, progress: Any = None
) -> tuple[np.ndarray, list[dict]]:
    """Sample ``images_per_prompt`` images per prompt from a diffusers folder / shipped alias (its card's sampler)."""
    from visalign.models.loading import load_pipeline, sampler_defaults
    from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs

    family, pipe = load_pipeline(model)
    d = sampler_defaults(model)
    kwargs = pipeline_kwargs(
        family, d.get("num_inference_steps"), d.get("guidance_scale"), d.get("max_sequence_length")
    )
    k = images_per_prompt
    per_call = max(1, 32 // k)
    out, metas = [], []
    task = progress.add_task(f"sample {Path(str(model)).name}", total=len(prompts) * k) if progress else None
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start : start + per_call]
        texts = [md["prompt"] for md in chunk for _ in range(k)]
        seeds = [image_seed(seed, start + i, j) for i in range(len(chunk)) for j in range(k)]
        images = generate(pipe, texts, seeds, kwargs, batch_size=len(texts))
        if images.shape[1:3] != (size, size):
            from PIL import Image

            images = np.stack(
                [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
            )
        out.append(images)
        metas += [md for md in chunk for _ in range(k)]
        if progress is not None:
            progress.update(task, advance=len(texts))
    return np.concatenate(out), metas


def generated_pairs(images: np.ndarray, metas: list[dict], prompts: list[dict], seed: int) -> PairSet:
    """Generated images against their own prompt, and each once against another prompt of the same tag."""
    if not len(metas):
        return PairSet.empty()
    rng = np.random.default_rng(seed)
    by_tag: dict[str, list[dict]] = {}
    for md in prompts:
        by_tag.setdefault(md.get("tag", ""), []).append(md)
    own = label(images, metas, ["generated"] * len(metas))
    other = []
    for md in metas:
        pool = [m for m in by_tag.get(md.get("tag", ""), prompts) if m["prompt"] != md["prompt"]] or prompts
        other.append(pool[int(rng.integers(len(pool)))])
    return PairSet.concat([own, label(images, other, ["generated"] * len(metas))])


# -- agreement ----------------------------------------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC: the chance that a verifier-correct pair scores above a verifier-incorrect one (ties: 1/2)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _ranks(np.asarray(score, np.float64)) + 1.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def agreement(
    pred_soft: np.ndarray, pred_strict: np.ndarray, soft: np.ndarray, strict: np.ndarray
) -> dict[str, float]:
    """Agreement of predictions with the verifier: Pearson / Spearman of soft scores, MAE, strict accuracy."""
    pred_soft, soft = np.asarray(pred_soft, np.float64), np.asarray(soft, np.float64)
    hit = (np.asarray(pred_strict) > 0.5) == (np.asarray(strict) > 0.5)
    return {
        "n": int(len(soft)),
        "pearson": _pearson(pred_soft, soft),
        "spearman": _pearson(_ranks(pred_soft), _ranks(soft)) if len(soft) > 1 else float("nan"),
        "mae": float(np.abs(pred_soft - soft).mean()) if len(soft) else float("nan"),
        "strict_accuracy": float(hit.mean()) if len(soft) else float("nan"),
        "strict_auc": _auc(pred_soft, np.asarray(strict) > 0.5),
        "verifier_strict_rate": float((np.asarray(strict) > 0.5).mean()) if len(soft) else float("nan"),
        "verifier_soft_mean": float(soft.mean()) if len(soft) else float("nan"),
    }


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict(model: ShapesRM, pairs: PairSet, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(soft score, strict probability) predicted for every pair."""
    model.eval()
    soft, strict = [], []
    for start in range(0, len(pairs), batch_size):
        sl = slice(start, start + batch_size)
        out = model(to_tensor(pairs.images[sl]), [m["prompt"] for m in pairs.metadata[sl]])
        soft.append(torch.sigmoid(out["soft"]).numpy())
        strict.append(torch.sigmoid(out["strict"]).numpy())
    if not soft:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(soft), np.concatenate(strict)


def evaluate(model: ShapesRM, sets: dict[str, PairSet]) -> dict[str, dict[str, float]]:
    """``agreement`` on each named held-out set (empty sets are skipped)."""
    out = {}
    for name, pairs in sets.items():
        if len(pairs):
            ps, pt = predict(model, pairs)
            out[name] = agreement(ps, pt, pairs.soft, pairs.strict)
    return out


def pixel_attack(
    model: ShapesRM, prompts: list[dict], steps: int = 40, lr: float = 0.01, seed: int = 0
) -> dict:
    """Reward hacking check: gradient ascent on the pixels of mismatched renders (one per prompt), then the
    model's and the verifier's scores before and after (Adam on unconstrained pixels, clamped to [0, 1])."""
    from visalign.worlds.shapes.mismatch import corrupt
    from visalign.worlds.shapes.render import render_scene

    rng = np.random.default_rng(seed)
    arrays = np.stack([render_scene(corrupt(md, rng)[1], seed + i) for i, md in enumerate(prompts)])
    texts = [md["prompt"] for md in prompts]
    start = to_tensor(arrays)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        loss = -torch.sigmoid(model(x.clamp(0, 1), texts)["soft"]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        end = x.clamp(0, 1)
        before = torch.sigmoid(model(start, texts)["soft"]).mean().item()
        after = torch.sigmoid(model(end, texts)["soft"]).mean().item()
    end_u8 = (end.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    v0, v1 = label(arrays, prompts, ["x"] * len(prompts)), label(end_u8, prompts, ["x"] * len(prompts))
    return {
        "n": len(prompts), "steps": steps, "lr": lr,
        "rm_before": before, "rm_after": after,
        "verifier_soft_before": float(v0.soft.mean()), "verifier_soft_after": float(v1.soft.mean()),
        "verifier_strict_before": float(v0.strict.mean()), "verifier_strict_after": float(v1.strict.mean()),
        "mean_abs_pixel_change": float((end - start).abs().mean()),
    }  # fmt: skip


# -- training -----------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    strict_weight: float = 0.5
    generated_weight: float = 3.0  # sampling weight of a generated pair relative to a synthetic one
    seed: int = 0
    log_every: int = 100
    extra: dict[str, Any] = field(default_factory=dict)


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    frac = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def train(
    train_set: PairSet,
    settings: TrainSettings,
    model: ShapesRM | None = None,
    progress: Any = None,
    log: Any = None,
) -> tuple[ShapesRM, list[dict[str, float]]]:
    """Fit a reward model to ``train_set``'s verifier labels; returns the model (in eval mode) and a loss log."""
    if not len(train_set):
        raise UserError(
            "train-shapes-rm: no training pairs (give --synthetic > 0, --generated DIR or --model)"
        )
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed + 17)
    model = model if model is not None else ShapesRM(RMConfig())
    model.train()
    prompts = sorted({m["prompt"] for m in train_set.metadata})
    ids, lengths = model.token_ids(prompts)
    row = {p: i for i, p in enumerate(prompts)}
    pair_rows = np.array([row[m["prompt"]] for m in train_set.metadata])
    weights = np.where(np.array(train_set.source) == "generated", settings.generated_weight, 1.0)
    weights = weights / weights.sum()
    images = torch.from_numpy(np.ascontiguousarray(train_set.images))  # uint8, converted per batch
    soft = torch.from_numpy(train_set.soft)
    strict = torch.from_numpy(train_set.strict)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, float]] = []
    task = progress.add_task("train", total=settings.steps) if progress is not None else None
    running, t0 = [], time.perf_counter()
    for step in range(settings.steps):
        idx = rng.choice(len(train_set), size=settings.batch_size, p=weights)
        batch_rows, which = np.unique(pair_rows[idx], return_inverse=True)
        sel = torch.from_numpy(batch_rows)
        batch = images[torch.from_numpy(idx)].permute(0, 3, 1, 2).float().div_(255.0)
        out = model.forward_ids(batch, ids[sel], lengths[sel], torch.from_numpy(which))
        loss_soft = F.binary_cross_entropy_with_logits(out["soft"], soft[idx])
        loss_strict = F.binary_cross_entropy_with_logits(out["strict"], strict[idx])
        loss = loss_soft + settings.strict_weight * loss_strict
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mae = float((torch.sigmoid(out["soft"].detach()) - soft[idx]).abs().mean())
        running.append((loss_soft.item(), loss_strict.item(), mae))
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            a = np.mean(running, axis=0)
            rec = {"step": step + 1, "loss_soft": float(a[0]), "loss_strict": float(a[1]), "mae": float(a[2]),
                   "wall": time.perf_counter() - t0}  # fmt: skip
            history.append(rec)
            running = []
            if log is not None:
                log(rec)
        if progress is not None:
            progress.update(task, advance=1)
    return model.eval(), history


# -- the command --------------------------------------------------------------------------------------------
def _split_generated(images: np.ndarray, metas: list[dict], frac: float, seed: int) -> tuple[tuple, tuple]:
    """Hold out a fraction of the prompts (all their images) of a generated set."""
    prompts = sorted({m["prompt"] for m in metas})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(prompts)[: int(round(frac * len(prompts)))].tolist())
    tr = [i for i, m in enumerate(metas) if m["prompt"] not in held]
    ev = [i for i, m in enumerate(metas) if m["prompt"] in held]
    return (images[tr], [metas[i] for i in tr]), (images[ev], [metas[i] for i in ev])


def run_command(args: Any) -> int:
    """``visalign rewards train-shapes-rm`` (arguments: ``commands/rewards.py``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from visalign.worlds.shapes.prompts import load_split
    from visalign.worlds.shapes.vocab import TAGS

    console = Console(stderr=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("synthetic", "eval_synthetic", "steps", "batch_size"):
        if getattr(args, name) < (1 if name in ("steps", "batch_size") else 0):
            raise UserError(
                f"--{name.replace('_', '-')} must be {'at least 1' if name in ('steps', 'batch_size') else '>= 0'}"
            )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    init = load_rm(args.init) if args.init else None
    init_summary = _init_summary(args.init) if args.init else None
    train_prompts, test_prompts = load_split("train"), load_split("test")
    t_start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        gen_train_imgs, gen_train_md = read_generated(args.generated or [])
        # held-out generated images, in named groups (one per folder / source), reported together and apart
        groups: list[tuple[str, np.ndarray, list[dict]]] = []
        for folder in args.eval_generated or []:
            groups.append((Path(folder).name, *read_generated([folder])))
        if len(gen_train_md) and not groups and args.holdout > 0:
            (gen_train_imgs, gen_train_md), held = _split_generated(
                gen_train_imgs, gen_train_md, args.holdout, args.seed
            )
            groups.append(("held-out prompts of --generated", *held))
        if args.model:
            if args.model_images > 0:
                im, md = sample_generated(
                    args.model, train_prompts, args.model_images, args.seed, progress=progress
                )
                gen_train_imgs = np.concatenate([gen_train_imgs, im]) if len(gen_train_md) else im
                gen_train_md = gen_train_md + md
            if args.model_eval_images > 0:
                im, md = sample_generated(
                    args.model, test_prompts, args.model_eval_images, args.seed + 1, progress=progress
                )
                groups.append((f"{Path(str(args.model)).name} samples, test prompts", im, md))
        groups = [g for g in groups if len(g[2])]
        gen_eval_md = [m for g in groups for m in g[2]]
        gen_eval_imgs = (
            np.concatenate([g[1] for g in groups]) if groups else np.zeros((0, 64, 64, 3), np.uint8)
        )
        all_prompts = train_prompts + test_prompts
        train_set = PairSet.concat(
            [
                synthetic_pairs(train_prompts, args.synthetic, args.seed, progress=progress),
                generated_pairs(gen_train_imgs, gen_train_md, train_prompts, args.seed),
            ]
        )
        eval_synth = synthetic_pairs(test_prompts, args.eval_synthetic, args.seed + 1_000, progress=progress)
        eval_sets: dict[str, PairSet] = {
            "generated, own prompt": label(gen_eval_imgs, gen_eval_md, ["generated"] * len(gen_eval_md))
        }
        if len(groups) > 1:
            start = 0
            for name, _, md in groups:
                eval_sets[f"  {name}"] = eval_sets["generated, own prompt"].subset(
                    range(start, start + len(md))
                )
                start += len(md)
        own = eval_sets["generated, own prompt"]
        for tag in TAGS:
            idx = [i for i, m in enumerate(own.metadata) if m.get("tag") == tag]
            if idx and len(own):
                eval_sets[f"  tag {tag}"] = own.subset(idx)
        eval_sets["generated, another prompt of the tag"] = generated_pairs(
            gen_eval_imgs, gen_eval_md, all_prompts, args.seed
        ).subset(range(len(gen_eval_md), 2 * len(gen_eval_md)))
        eval_sets["synthetic, test prompts"] = eval_synth
        for src in ("rendered", "mismatched", "shuffled", "extra"):
            eval_sets[f"  {src}"] = eval_synth.subset(
                [i for i, s in enumerate(eval_synth.source) if s == src]
            )
        data_s = time.perf_counter() - t_start
        console.print(f"training pairs: {len(train_set)} {train_set.counts()} (built in {data_s:.0f} s)")
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 generated_weight=args.generated_weight)  # fmt: skip

        def log(rec: dict[str, float]) -> None:
            console.print(
                f"step {rec['step']:>5}  loss_soft {rec['loss_soft']:.4f}  loss_strict {rec['loss_strict']:.4f}"
                f"  mae {rec['mae']:.4f}  {rec['wall']:.0f} s"
            )

        t_train = time.perf_counter()
        model, history = train(train_set, settings, model=init, progress=progress, log=log)
        train_s = time.perf_counter() - t_train
        metrics = evaluate(model, eval_sets)
        attack = pixel_attack(model, test_prompts[::3], seed=args.seed)
    summary = {
        "training": {
            "pairs": len(train_set),
            "by_source": train_set.counts(),
            "generated_images": len(gen_train_md),
            "generated_prompts": len({m["prompt"] for m in gen_train_md}),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "init": str(args.init) if args.init else None,
            "init_training": init_summary,
            "generated_sources": [Path(p).name for p in (args.generated or [])]
            + ([str(args.model)] if args.model else []),
            "data_seconds": round(data_s, 1),
            "train_seconds": round(train_s, 1),
            "threads": torch.get_num_threads(),
            "history": history,
        },
        "heldout": {
            "generated_images": len(gen_eval_md),
            "generated_prompts": len({m["prompt"] for m in gen_eval_md}),
            "generated_groups": {name: len(md) for name, _, md in groups},
            "synthetic_pairs": len(eval_synth),
            "synthetic_by_source": eval_synth.counts(),
        },
        "agreement": metrics,
        "pixel_attack": attack,
        "note": args.card_note or "",
    }
    save_rm(model, out, extra={"parameters": model.num_parameters()})
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not args.no_card:
        (out / "README.md").write_text(model_card(model, summary), encoding="utf-8")
    _print_metrics(console, metrics)
    console.print(
        f"wrote {out} ({model.num_parameters():,} parameters; data {data_s:.0f} s, training {train_s:.0f} s)"
    )
    return 0


def _init_summary(folder: str | Path) -> dict[str, Any] | None:
    """The training facts of the model a run starts from (its ``metrics.json``, without the loss curve)."""
    path = Path(folder) / "metrics.json"
    try:
        facts = dict(json.loads(path.read_text(encoding="utf-8"))["training"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    facts.pop("history", None)
    return facts


def _print_metrics(console: Any, metrics: dict[str, dict[str, float]]) -> None:
    from rich.table import Table

    table = Table(title="agreement with the verifier (held out)")
    for col in (
        "set",
        "n",
        "pearson",
        "spearman",
        "MAE",
        "strict acc.",
        "strict AUC",
        "verifier strict rate",
    ):
        table.add_column(col)
    for name, m in metrics.items():
        table.add_row(name, str(m["n"]), f"{m['pearson']:.3f}", f"{m['spearman']:.3f}", f"{m['mae']:.3f}",
                      f"{m['strict_accuracy']:.3f}", f"{m['strict_auc']:.3f}", f"{m['verifier_strict_rate']:.3f}")  # fmt: skip
    console.print(table)


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """The agreement figures as a Markdown table."""
    lines = [
        "| held-out set | pairs | Pearson | Spearman | MAE | strict accuracy | strict AUC | verifier strict rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in metrics.items():
        label_ = name.strip() if not name.startswith("  ") else f"&nbsp;&nbsp;{name.strip()}"
        lines.append(
            f"| {label_} | {m['n']} | {m['pearson']:.3f} | {m['spearman']:.3f} | {m['mae']:.3f} | "
            f"{m['strict_accuracy']:.3f} | {m['strict_auc']:.3f} | {m['verifier_strict_rate']:.3f} |"
        )
    return "\n".join(lines)


def _init_line(t: dict[str, Any]) -> str:
    """The card's line about the model a run was initialised from (recursively, for a chain of runs)."""
    if not t.get("init"):
        return ""
    prev = t.get("init_training")
    if not prev:
        return f"- initialised from the model in `{Path(t['init']).name}` (its training facts are not recorded)\n"
    text = (
        f"- initialised from a model trained the same way on {prev['pairs']:,} pairs {prev['by_source']} "
        f"for {prev['steps']} steps of batch {prev['batch_size']} (data {prev['data_seconds']:.0f} s, "
        f"training {prev['train_seconds']:.0f} s)\n"
    )
    return text + _init_line(prev).replace("- initialised", "  - which was itself initialised")


def model_card(model: ShapesRM, summary: dict[str, Any]) -> str:
    """A Markdown model card from a training summary (written next to the weights)."""
    c = model.config
    t, h, a = summary["training"], summary["heldout"], summary["pixel_attack"]
    gen = (
        f"{t['generated_images']} generated images of {t['generated_prompts']} train prompts "
        f"(from {', '.join(t['generated_sources'])}), each paired with its own prompt and once with another "
        f"prompt of the same tag"
        if t["generated_images"]
        else "none (no generator was available when this model was trained)"
    )
    return f"""# shapes-rm: a learned, differentiable ShapesWorld reward model

A prompt-conditioned CNN that predicts the ShapesWorld verifier's soft score (and its strict verdict) for
an (image, prompt) pair. The verifier is not differentiable; this model is, so reward back-propagation
methods (ReFL, DRaFT, AlignProp) can optimise it. Measure what they really achieved with the verifier
(`shapes_soft` / `shapes_strict`, `visalign eval`): a model optimised against a learned reward can find
images that this network scores highly and the verifier does not.

Use: `build_reward("shapes_rm")` (this folder) or `build_reward("shapes_rm", path=FOLDER)`. Main score
`shapes_rm` = sigmoid(soft logit) in [0, 1]; component `shapes_rm_strict` = predicted probability that the
strict verdict is correct. Prompts must be ShapesWorld prompts: a word outside the {len(c.vocab) - 2}-token
vocabulary (words and digits) is an error.

## Architecture

- Prompt: lower-cased words (numbers split into digits), {c.embed_dim}-d embeddings, a bidirectional GRU
  ({c.text_dim} per direction); prompt vector of {2 * c.text_dim} features.
- Image: {c.image_size}x{c.image_size} RGB (other sizes are resized, differentiably) plus two coordinate
  channels; 3x3 convolutions with channels {list(c.channels)} and strides {list(c.strides)}; each followed by
  GroupNorm ({c.groups} groups, no affine), FiLM from the prompt vector, SiLU.
- Head: mean, max and prompt-queried attention pooling + the prompt vector, MLP ({c.head_dim}) to two logits.
- Parameters: {model.num_parameters():,} (float32 safetensors).

## Training data

Every pair is labelled by the verifier on that exact (image, prompt) pair. Training prompts are the
ShapesWorld `train` split; synthetic images are degraded at random (40% within the verifier's specified
limits, 20% harder).

- pairs: {t["pairs"]:,}, by source: {t["by_source"]}
- generated: {gen}
- optimisation: {t["steps"]} steps of batch {t["batch_size"]}, AdamW, lr {t["lr"]} (cosine), seed {t["seed"]}
{_init_line(t)}- time: data {t["data_seconds"]:.0f} s, training {t["train_seconds"]:.0f} s on {t["threads"]} CPU thread(s)

## Agreement with the verifier on held-out data

Held-out generated images: {h["generated_images"]} images of {h["generated_prompts"]} prompts never used in
training ({h.get("generated_groups") or "none"}). "generated, own prompt" scores each against the prompt it
was sampled for (also broken down by tag), "generated, another prompt of the tag" against another prompt of
the same tag. Held-out synthetic pairs: {h["synthetic_pairs"]} pairs over the `test` split's prompts (prompt
strings and some compositions that never occur in training), by source {h["synthetic_by_source"]}.

Pearson / Spearman: correlation of the predicted and the verifier's soft scores; MAE: mean absolute error of
the soft score; strict accuracy: the strict head thresholded at 0.5 against the verifier's verdict (compare
with the verifier strict rate: always answering the majority verdict scores max(rate, 1 - rate)); strict AUC:
the chance that a pair the verifier accepts gets a higher `shapes_rm` score than a pair it rejects.

{metrics_table(summary["agreement"])}

## Reward hacking check

Gradient ascent on the pixels of {a["n"]} mismatched renders (test prompts; Adam, lr {a["lr"]}, {a["steps"]} steps,
mean absolute pixel change {a["mean_abs_pixel_change"]:.3f}) raises this model's mean score from
{a["rm_before"]:.3f} to {a["rm_after"]:.3f}, while the verifier's mean soft score goes from
{a["verifier_soft_before"]:.3f} to {a["verifier_soft_after"]:.3f} (strict {a["verifier_strict_before"]:.3f} to
{a["verifier_strict_after"]:.3f}). Unconstrained pixels are not a generator, but the lesson holds: optimise
this model, judge with the verifier, and keep the KL / step budget of reward back-propagation modest.

{summary.get("note", "")}

Retrain: `visalign rewards train-shapes-rm --out DIR` (see `docs/shapes_rm.md`); `metrics.json` holds these
figures and the training loss curve.
"""
