"""Reward throughput on CPU (tiny random weights) and the reward server's batching speed-up.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_rewards.py [--batch 16] [--repeats 3] [--requests 64]

Part 1: images/s of each reward's forward pass (best of ``--repeats``) (and forward + backward for the differentiable ones) on a
batch of 64x64 images. Model-based rewards use the tiny checkpoints of ``tests/reward_fixtures.py`` (same
file formats as the releases, a few thousand parameters), so the figures measure the code path (loading,
preprocessing, tokenisation, conversion overheads), not the cost of the real networks.
Part 2: many concurrent single-image requests to ``RewardHTTPServer`` with ``max_batch`` 1 vs 16.
Prints markdown tables (copied into docs/rewards.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import reward_fixtures as fx  # noqa: E402
from visalign.rewards import Reward, build_reward  # noqa: E402
from visalign.rewards.server import RewardHTTPServer  # noqa: E402


def build_all(tmp: Path) -> dict[str, Reward]:
    clip = fx.make_clip_folder(tmp / "clip")
    fx.write_hps(tmp / "hps", fx.make_openclip_state())
    fx.write_clip_tokenizer(tmp / "cliptok")
    fx.write_imagereward(tmp / "ir", tmp / "bert")
    head = fx.write_aesthetic_head(tmp / "aes", 16)
    heads = {"vision_heads": 4, "text_heads": 4}
    return {
        "jpeg_compressibility": build_reward("jpeg_compressibility"),
        "shapes_strict": build_reward("shapes_strict"),
        "ocr (null engine)": build_reward("ocr", engine=lambda images: ["" for _ in images]),
        "clipscore": build_reward("clipscore", checkpoint=str(clip)),
        "pickscore": build_reward("pickscore", checkpoint=str(clip), processor=None),
        "aesthetic": build_reward("aesthetic", head=str(head), clip=str(clip)),
        "hpsv2": build_reward("hpsv2", checkpoint=str(tmp / "hps"), tokenizer=str(tmp / "cliptok"), **heads),
        "imagereward": build_reward("imagereward", checkpoint=str(tmp / "ir"), tokenizer=str(tmp / "bert"),
                                    vision_heads=4),  # fmt: skip
    }


def shapes_batch(n: int) -> tuple[torch.Tensor, list[str], list[dict]]:
    from visalign.worlds.shapes.prompts import load_split
    from visalign.worlds.shapes.render import render_scene

    metas = load_split("train")[:n]
    arrays = [torch.from_numpy(render_scene(m, i)) for i, m in enumerate(metas)]
    images = torch.stack(arrays).permute(0, 3, 1, 2).float() / 255
    return images, [m["prompt"] for m in metas], metas


def throughput(reward: Reward, images: torch.Tensor, prompts: list[str], metas: list[dict], repeats: int,
               backward: bool) -> float:  # fmt: skip
    def once() -> None:
        x = images.clone().requires_grad_(backward)
        out = reward(x, prompts, metas)
        if backward:
            next(iter(out.values())).sum().backward()

    times = []
    with torch.set_grad_enabled(backward):
        once()  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
    return images.shape[0] / min(times)  # best of the repeats: the machine is shared, the minimum is the cost


def server_speed(reward: Reward, images: torch.Tensor, prompts: list[str], metas: list[dict], requests: int,
                 max_batch: int) -> tuple[float, int]:  # fmt: skip
    srv = RewardHTTPServer(reward, max_batch=max_batch, max_wait_s=0.005).start()
    client = build_reward("remote", url=srv.url, retries=0, timeout=120)
    n = images.shape[0]

    def call(i: int) -> None:
        client(images[i % n : i % n + 1], [prompts[i % n]], [metas[i % n]])

    try:
        call(0)
        batches_before = srv.scorer.batches
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(call, range(requests)))
        elapsed = time.perf_counter() - start
        return requests / elapsed, srv.scorer.batches - batches_before
    finally:
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, prompts, metas = shapes_batch(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        rewards = build_all(Path(tmp))
        print(f"## Reward throughput (CPU, {args.threads} threads, batch {args.batch}, 64x64 images, tiny weights)\n")
        print("| reward | images/s forward | images/s forward+backward |")
        print("|---|---|---|")
        for name, reward in rewards.items():
            fwd = throughput(reward, images, prompts, metas, args.repeats, backward=False)
            bwd = throughput(reward, images, prompts, metas, args.repeats, True) if reward.differentiable else None
            print(f"| {name} | {fwd:,.0f} | {'-' if bwd is None else f'{bwd:,.0f}'} |")
        print(f"\n## Server batching ({args.requests} concurrent single-image requests, 16 client threads)\n")
        print("| reward | max_batch 1 req/s | max_batch 16 req/s | speed-up | reward calls (1 / 16) |")
        print("|---|---|---|---|---|")
        for name in ("pickscore", "imagereward", "shapes_strict"):
            one, calls_one = server_speed(rewards[name], images, prompts, metas, args.requests, 1)
            many, calls_many = server_speed(rewards[name], images, prompts, metas, args.requests, 16)
            print(f"| {name} | {one:,.0f} | {many:,.0f} | {many / one:.2f}x | {calls_one} / {calls_many} |")


if __name__ == "__main__":
    main()
