"""Throughput of the reward server and the ``remote`` client over loopback, optionally against a git revision.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reward_server.py [--clients 16] [--requests 256]
        [--images 1] [--size 64] [--call-ms 0] [--repeats 5] [--baseline REV]

Starts ``RewardHTTPServer`` in-process on 127.0.0.1 with a cheap reward (mean brightness, plus ``--call-ms``
of sleep per reward call to stand in for a model whose cost is mostly per call, which is what batching
amortises), sends ``--requests`` requests of ``--images`` images from ``--clients`` concurrent client
threads, and reports requests/s and images/s (medians over ``--repeats`` rounds) and the reward calls
made (how well requests were coalesced). The client is exactly what the ``remote`` reward does per call
(``encode_request`` -> ``post_json`` -> ``decode_scores``).

``--baseline REV`` also loads the server, client and wire modules of git revision ``REV`` (read with
``git show``; nothing in the checkout changes) and runs them in the same process, alternating rounds with
the working tree's, so the ratio after / before comes from one run on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from visalign.rewards import Reward, _http, server, wire

ROOT = Path(__file__).resolve().parents[1]

# The modules that make up the server and the client, in import order (each may import the ones before it); a
# revision that predates one of them (the server was one file before server_batching / server_sockets) skips it.
MODULES = ("_images", "_http", "wire", "server_batching", "server_sockets", "server")


class Brightness(Reward):
    name = "brightness"

    def __init__(self, call_ms: float) -> None:
        self.call_s = call_ms / 1000

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        if self.call_s:
            time.sleep(self.call_s)  # releases the GIL, like a model's forward pass
        return {"brightness": images.mean(dim=(1, 2, 3))}


def load_revision(rev: str) -> dict[str, types.ModuleType]:
    """The server, client and wire modules of git revision ``rev``, imported under private names."""
    loaded: dict[str, types.ModuleType] = {}
    for name in MODULES:
        shown = subprocess.run(["git", "show", f"{rev}:src/visalign/rewards/{name}.py"], cwd=ROOT,
                               capture_output=True, text=True)  # fmt: skip
        if shown.returncode != 0:
            continue  # not in that revision
        source = shown.stdout
        for dep in loaded:  # point its imports of its siblings at the same revision's
            source = source.replace(f"visalign.rewards.{dep} ", f"_baseline_{dep} ")
        module = types.ModuleType(f"_baseline_{name}")
        module.__file__ = f"{rev}:src/visalign/rewards/{name}.py"
        sys.modules[module.__name__] = module  # dataclasses look their module up here
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own history
        loaded[name] = module
    return loaded


def one_round(mods: dict[str, Any], args: argparse.Namespace, images: torch.Tensor) -> tuple[float, float, int]:
    srv = mods["server"].RewardHTTPServer(Brightness(args.call_ms), max_batch=args.max_batch,
                                          max_wait_s=args.max_wait_ms / 1000).start()  # fmt: skip
    url = f"{srv.url}/score"
    prompts = ["a prompt"] * images.shape[0]

    def call(_: int) -> None:
        payload = mods["wire"].encode_request(images, prompts, None)
        reply = mods["_http"].post_json("remote", url, payload, timeout=60, retries=0)
        mods["wire"].decode_scores(reply, images.shape[0])

    try:
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            list(pool.map(call, range(args.clients)))  # warm-up: threads, connections, first batches
            calls_before = srv.scorer.batches
            start = time.perf_counter()
            list(pool.map(call, range(args.requests)))
            elapsed = time.perf_counter() - start
        return args.requests / elapsed, args.requests * images.shape[0] / elapsed, srv.scorer.batches - calls_before
    finally:
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=256, help="requests per round")
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--call-ms", type=float, default=0.0, help="sleep per reward call (a model's fixed cost)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5, help="rounds per variant; medians are reported")
    parser.add_argument("--baseline", default=None, metavar="REV", help="also run git revision REV's server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    variants: dict[str, dict[str, Any]] = {}
    if args.baseline:
        variants[f"before ({args.baseline})"] = load_revision(args.baseline)
    variants["after (working tree)"] = {"_http": _http, "wire": wire, "server": server}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, mods in variants.items():  # alternate, so that load changes on the machine hit both alike
            results[name].append(one_round(mods, args, images))
    print(f"## Reward server over loopback ({args.clients} clients, {args.requests} requests of {args.images} "
          f"{args.size}x{args.size} images, {args.call_ms:g} ms per reward call, max_batch {args.max_batch}, "
          f"median of {args.repeats})\n")  # fmt: skip
    print("| server | requests/s | images/s | requests/s, slowest to fastest round | reward calls |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, rows in results.items():
        rps, ips = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        calls = statistics.median(r[2] for r in rows)
        medians[name] = rps
        spread = f"{min(r[0] for r in rows):,.0f} - {max(r[0] for r in rows):,.0f}"
        print(f"| {name} | {rps:,.0f} | {ips:,.0f} | {spread} | {calls:,.0f} |")
    if len(medians) == 2:
        before, after = medians.values()
        print(f"\nratio after / before (requests/s): {after / before:.2f}")


if __name__ == "__main__":
    main()
