"""Does a model draw the digits its prompt names, or only the right number of glyphs?

    python benchmarks/digit_binding.py MODEL [--lengths 1,2,3] [--split train] [--every 7]
        [--images-per-prompt 4] [--guidance G] [--steps S] [--seed 0]

The `text` tag is strict: every digit must be read, in order. A model can fail it in two ways: it draws the
wrong number of glyphs, or the right number of glyphs of the wrong digits. This script samples the split's
text prompts (the numbers with ``--lengths`` digits, every ``--every``-th of them, in file order) with the
sampler `visalign sample` uses, reads each image with the verifier's own segmentation and glyph reader, and
prints:

* ``strict``: the fraction read exactly (the tag's score on these prompts);
* ``count``: the fraction whose reading has as many glyphs as the number has digits;
* ``digit accuracy``: among those, the fraction of positions whose digit is right (an unreadable glyph counts
  as wrong). Drawing glyphs without regard to the prompt's digits gives about 0.1.

On the train split this separates "has not learned digits" from "does not generalise to held-out numbers".
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def text_prompts(split: str, lengths: set[int], every: int) -> list[dict]:
    from visalign.worlds.shapes.prompts import load_split

    items = [m for m in load_split(split) if m["tag"] == "text" and len(m["text"]) in lengths]
    return items[::every]


def binding_stats(expected: list[str], read: list[str]) -> dict[str, float]:
    """strict / count / digit accuracy given the count (see the module docstring)."""
    same_length = [(e, r) for e, r in zip(expected, read, strict=True) if len(e) == len(r)]
    positions = [(a, b) for e, r in same_length for a, b in zip(e, r, strict=True)]
    return {
        "images": len(expected),
        "strict": float(np.mean([e == r for e, r in zip(expected, read, strict=True)])),
        "count": len(same_length) / len(expected),
        "digit_accuracy": float(np.mean([a == b for a, b in positions])) if positions else float("nan"),
    }


def read_digits(images: np.ndarray) -> list[str]:
    """The digits the verifier reads in each of a uint8 ``[N, H, W, 3]`` batch ('?': a glyph it cannot read)."""
    from visalign.worlds.shapes.detect import analyse
    from visalign.worlds.shapes.inputs import as_image_list
    from visalign.worlds.shapes.segment import segment

    found = analyse(segment(np.stack(as_image_list(images))), [True] * len(images))
    return [str(f) for f in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--lengths", default="1,2,3", help="digit counts of the numbers to ask for")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--every", type=int, default=7, help="take every n-th matching prompt")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=None, help="default: the model card's")
    parser.add_argument("--steps", type=int, default=None, help="default: the model card's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from visalign.models.loading import load_pipeline, sampler_defaults
    from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs

    prompts = text_prompts(args.split, {int(n) for n in args.lengths.split(",")}, args.every)
    family, pipe = load_pipeline(args.model)
    defaults = sampler_defaults(args.model)
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps")
    guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale")
    kwargs = pipeline_kwargs(family, steps, guidance, defaults.get("max_sequence_length"))
    k = args.images_per_prompt
    expected, read = [], []
    for start in range(0, len(prompts), max(1, 32 // k)):
        chunk = prompts[start : start + max(1, 32 // k)]
        seeds = [image_seed(args.seed, start + i, j) for i in range(len(chunk)) for j in range(k)]
        images = generate(pipe, [m["prompt"] for m in chunk for _ in range(k)], seeds, kwargs, len(seeds))
        read += read_digits(images)
        expected += [m["text"] for m in chunk for _ in range(k)]
    stats = binding_stats(expected, read)
    stats.update(model=args.model, split=args.split, lengths=args.lengths, prompts=len(prompts),
                 steps=steps, guidance=guidance)  # fmt: skip
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
