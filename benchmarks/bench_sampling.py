"""Sampling throughput of the shipped base models on CPU: images/s at batch 32 with each card's sampler.

    python benchmarks/bench_sampling.py [--models shapes-flow shapes-diffusion] [--batch-size 32] [--repeats 3]

Each model is loaded with ``load_pipeline`` and sampled through the diffusers pipeline (the path
``visalign sample`` takes), after one warm-up batch. Prints one JSON line per model and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from visalign.models.loading import load_pipeline, sampler_defaults
from visalign.pretrain.generate import generate, pipeline_kwargs


def bench(model: str, batch_size: int, repeats: int, steps: int | None, guidance: float | None) -> dict:
    family, pipe = load_pipeline(model)
    defaults = sampler_defaults(model)
    steps = steps if steps is not None else defaults.get("num_inference_steps")
    guidance = guidance if guidance is not None else defaults.get("guidance_scale")
    kwargs = pipeline_kwargs(family, steps, guidance, defaults.get("max_sequence_length"))
    prompts = ["a photo of a red circle and a blue square"] * batch_size
    generate(pipe, prompts, list(range(batch_size)), kwargs, batch_size=batch_size)  # warm-up
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        generate(pipe, prompts, [r * batch_size + i for i in range(batch_size)], kwargs, batch_size=batch_size)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "model": model,
        "family": family,
        "batch_size": batch_size,
        "steps": steps,
        "guidance": guidance,
        "threads": torch.get_num_threads(),
        "seconds_per_batch": round(median, 4),
        "images_per_s": round(batch_size / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shapes-flow", "shapes-diffusion"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: each model's card")
    parser.add_argument("--guidance", type=float, default=None, help="default: each model's card")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        row = bench(model, args.batch_size, args.repeats, args.steps, args.guidance)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| model | steps | guidance | batch | s / batch | images/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['guidance']} | {r['batch_size']} | {r['seconds_per_batch']} | {r['images_per_s']} |")


if __name__ == "__main__":
    main()
