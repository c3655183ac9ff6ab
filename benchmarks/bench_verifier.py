"""Measure the ShapesWorld verifier: accuracy on ground truth, robustness, false accepts, speed.

    python benchmarks/bench_verifier.py                      # print the table
    python benchmarks/bench_verifier.py --write-docs         # also refresh docs/shapes_world.md's table
                                                             # and docs/img/shapes_world_sample.png

Scenes are drawn tag-balanced from both prompt splits and rendered with seeds disjoint from the
tests'. Speed is measured pinned to one CPU core with single-threaded numpy, on 64 x 64 images,
in batches of 256, best of three runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from visalign.report.grid import make_grid  # noqa: E402
from visalign.worlds.shapes.augment import Degradation, degrade, random_degradation  # noqa: E402
from visalign.worlds.shapes.mismatch import corrupt  # noqa: E402
from visalign.worlds.shapes.prompts import load_split  # noqa: E402
from visalign.worlds.shapes.render import render_scene  # noqa: E402
from visalign.worlds.shapes.verifier import verify_batch  # noqa: E402
from visalign.worlds.shapes.vocab import TAGS  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "shapes_world.md"
SHEET = DOCS.parent / "img" / "shapes_world_sample.png"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SEED = 20261123


def balanced_sample(n: int, rng: np.random.Generator) -> list[dict]:
    """n metadata, the same number per tag, drawn from train + test."""
    pool = load_split("train") + load_split("test")
    by_tag = {t: [md for md in pool if md["tag"] == t] for t in TAGS}
    per = n // len(TAGS)
    return [by_tag[t][i] for t in TAGS for i in rng.integers(len(by_tag[t]), size=per)]


def accuracy(images: list[np.ndarray] | np.ndarray, mds: list[dict]) -> tuple[float, Counter]:
    verdicts = verify_batch(images, mds)
    wrong = Counter(md["tag"] for md, v in zip(mds, verdicts, strict=True) if not v.correct)
    return sum(v.correct for v in verdicts) / len(verdicts), wrong


def speed(images: np.ndarray, mds: list[dict]) -> float:
    """Images per second on one core (best of three)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    verify_batch(images[:64], mds[:64])  # warm up (templates are built on first use)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, len(images), 256):
            verify_batch(images[s : s + 256], mds[s : s + 256])
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def run(n: int) -> tuple[list[tuple[str, str, str]], dict]:
    rng = np.random.default_rng(SEED)
    mds = balanced_sample(n, rng)
    clean = np.stack([render_scene(md, SEED + i) for i, md in enumerate(mds)])
    rows: list[tuple[str, str, str]] = []
    figures: dict = {"n": len(mds)}

    acc, wrong = accuracy(clean, mds)
    figures["clean"] = acc
    rows.append(("ground truth, clean", f"{acc:.2%} strict accuracy", _errors(wrong)))

    settings = {
        "random mix: blur sigma U(0,1), noise U(0,0.05), JPEG q U(50,95), jitter U(0,8%)": None,
        "blur sigma = 1 px": Degradation(sigma=1.0),
        "noise sigma = 0.05": Degradation(noise=0.05),
        "JPEG quality 50": Degradation(quality=50),
        "colour jitter +-8% per channel": Degradation(jitter=0.08),
        "all four at their limits at once": Degradation(sigma=1.0, noise=0.05, quality=50, jitter=0.08),
    }
    for name, deg in settings.items():
        arng = np.random.default_rng(SEED + 1)
        images = np.stack([degrade(im, deg or random_degradation(arng), arng) for im in clean])
        acc, wrong = accuracy(images, mds)
        figures[f"augmented: {name}"] = acc
        rows.append((f"ground truth, {name}", f"{acc:.2%} strict accuracy", _errors(wrong)))

    mrng = np.random.default_rng(SEED + 2)
    kinds, images = [], []
    for i, md in enumerate(mds):
        kind, scene_md = corrupt(md, mrng)
        kinds.append(kind)
        images.append(render_scene(scene_md, SEED + 10_000_000 + i))
    verdicts = verify_batch(np.stack(images), mds)
    accepted = Counter(k for k, v in zip(kinds, verdicts, strict=True) if v.correct)
    far = sum(accepted.values()) / len(mds)
    figures["false_accept"] = far
    kinds_seen = ", ".join(f"{k} {c}" for k, c in sorted(Counter(kinds).items()))
    rows.append(("mismatched pairs (" + kinds_seen + ")", f"{far:.2%} false accepts", _errors(accepted)))

    big = [render_scene(md, SEED + i, size=128) for i, md in enumerate(mds[: len(mds) // 4])]
    acc, wrong = accuracy(big, mds[: len(mds) // 4])
    figures["clean_128"] = acc
    rows.append(
        (f"ground truth at 128 x 128 ({len(big)} scenes)", f"{acc:.2%} strict accuracy", _errors(wrong))
    )

    ips = speed(clean, mds)
    figures["images_per_second"] = ips
    rows.append(
        ("speed, 64 x 64, one core, batches of 256", f"{ips:,.0f} images/s", _cpu())
    )
    return rows, figures


def sample_sheet(path: Path) -> None:
    """Two test prompts per tag (one column per tag), then the first row again at the degradation limits."""
    test = load_split("test")
    firsts = [next(md for md in test if md["tag"] == t) for t in TAGS]
    seconds = [[md for md in test if md["tag"] == t][1] for t in TAGS]
    images = [render_scene(md, 100 + i) for i, md in enumerate(firsts + seconds)]
    rng = np.random.default_rng(0)
    limit = Degradation(sigma=1.0, noise=0.05, quality=50, jitter=0.08)
    images += [degrade(im, limit, rng) for im in images[: len(TAGS)]]
    labels = [md["prompt"] for md in firsts + seconds] + ["degraded: " + md["prompt"] for md in firsts]
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, labels, ncols=len(TAGS), scale=2, caption_lines=3).save(path, optimize=True)


def _cpu() -> str:
    """The CPU model, for the speed row."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _errors(counter: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counter.most_common()) or "-"


def table(rows: list[tuple[str, str, str]], n: int) -> str:
    lines = [
        f"Measured with `python benchmarks/bench_verifier.py --n {n}` ({n} scenes, {n // len(TAGS)} per tag).",
        "",
        "| check | result | errors (by tag or kind) / machine |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3500, help="scenes per check (default: 3500)")
    parser.add_argument("--write-docs", action="store_true", help=f"refresh the table in {DOCS}")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    rows, figures = run(args.n)
    text = table(rows, figures["n"])
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if args.write_docs:
        doc = DOCS.read_text()
        if START not in doc or END not in doc:
            raise SystemExit(f"{DOCS} lacks the {START} ... {END} markers")
        doc = re.sub(
            re.escape(START) + ".*?" + re.escape(END), START + "\n" + text + "\n" + END, doc, flags=re.S
        )
        DOCS.write_text(doc)
        sample_sheet(SHEET)
        print(f"updated {DOCS} and {SHEET}")


if __name__ == "__main__":
    main()
