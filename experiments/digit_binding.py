"""Does a model draw the digits its prompt names, or only the right number of glyphs?

    python experiments/digit_binding.py MODEL [--lengths 1,2,3] [--split train] [--every 7]
        [--images-per-prompt 4] [--guidance G] [--steps S] [--seed 0] [--sheet PATH]
    python experiments/digit_binding.py MODEL --denoiser-loss [--lengths 1,2] [--scenes 64] [--levels 0.3,0.5,0.7,0.9]

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
``--sheet PATH`` also writes the images as a PNG grid, one row per prompt, each captioned "asked / read".

``--denoiser-loss`` asks the same question of the denoiser, without sampling: it renders ``--scenes`` train text
scenes, noises their latents to each level of ``--levels`` (flow: sigma on the straight path; diffusion: the
timestep ``round(level * 999)``) and prints the mean squared error of the model's x0 estimate with the right
prompt, with the prompt's digits replaced by other digits (every digit changed), and with the empty prompt. A
denoiser that draws the digits it is asked for does much worse with the wrong ones; one that ignores them does
about as well.
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


def write_sheet(
    images: list[np.ndarray], expected: list[str], read: list[str], per_row: int, path: str
) -> None:
    """The images as a PNG grid, ``per_row`` (one prompt's images) to a row, each captioned "asked / read"."""
    from visalign.report.grid import make_grid

    labels = [f"{e} / {r or '-'}" for e, r in zip(expected, read, strict=True)]
    make_grid(images, labels, ncols=per_row, scale=2, caption_lines=1).save(path)


def swap_digits(prompt: str, number: str, rng: np.random.Generator) -> str:
    """``prompt`` with ``number`` replaced by a number of the same length in which every digit differs."""
    other = "".join(str((int(d) + int(rng.integers(1, 10))) % 10) for d in number)
    return prompt.replace(number, other)


def network_output(pipe, family: str, x_t, level_t, cond: dict):
    """One denoiser evaluation: flow at time sigma * 1000, diffusion at integer timesteps."""
    if family == "flow":
        return pipe.transformer(hidden_states=x_t, timestep=level_t * 1000, return_dict=False, **cond)[0]
    return pipe.unet(x_t, level_t, return_dict=False, **cond)[0]


def x0_estimate(pipe, family: str, x_t, pred, level_t):
    """The x0 estimate of one network output: flow (``level_t`` = sigma) predicts x0 or v = eps - x0; diffusion
    (``level_t`` = integer timesteps) predicts epsilon, v or x0 (the DDIM kernel's conversion)."""
    prediction = pipe.scheduler.config.get("prediction_type")
    if family == "flow":
        return pred if prediction == "sample" else x_t - level_t.view(-1, 1, 1, 1) * pred
    from visalign.sampling.ddim import DDIM

    alpha_bar = pipe.scheduler.alphas_cumprod[level_t]
    return DDIM(0.0, prediction_type=prediction or "epsilon").x0_eps(x_t, pred, alpha_bar)[0]


def denoiser_losses(model: str, lengths: set[int], scenes: int, levels: list[float], seed: int) -> list[dict]:
    """x0 error with the right / digit-swapped / empty prompt at each noise level (module docstring)."""
    import torch

    from visalign.models.loading import load_pipeline
    from visalign.pretrain.data import ShapesData
    from visalign.pretrain.losses import encode_text
    from visalign.pretrain.prefetch import encode_normalised

    family, pipe = load_pipeline(model)
    pipe.to(torch.float32)
    batch = ShapesData(seed, pipe.vae.config.sample_size, tags=["text"], text_lengths=sorted(lengths)).batch(
        "stats", 0, scenes
    )
    rng = np.random.default_rng(seed)
    prompts = {
        "right": batch.prompts,
        "swapped": [swap_digits(m["prompt"], m["text"], rng) for m in batch.metadata],
        "empty": [""] * scenes,
    }
    out = []
    with torch.no_grad():
        z = encode_normalised(pipe.vae, batch.images)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
        conds = {name: encode_text(pipe, family, p) for name, p in prompts.items()}
        for level in levels:
            if family == "flow":
                t = torch.full((scenes,), level)
                x_t = (1 - level) * z + level * noise
            else:
                t = torch.full((scenes,), round(level * (pipe.scheduler.config.num_train_timesteps - 1)))
                x_t = pipe.scheduler.add_noise(z, noise, t)
            errors = {}
            for name, cond in conds.items():
                x0 = x0_estimate(pipe, family, x_t, network_output(pipe, family, x_t, t, cond), t)
                errors[name] = float(((x0 - z) ** 2).mean())
            out.append({"level": level, **errors,
                        "swapped_vs_right": errors["swapped"] / errors["right"] - 1,
                        "empty_vs_right": errors["empty"] / errors["right"] - 1})  # fmt: skip
    return out


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
    parser.add_argument("--sheet", default=None, help="also write the images here as a PNG grid")
    parser.add_argument("--denoiser-loss", action="store_true", help="x0 error: right / swapped / no digits")
    parser.add_argument("--scenes", type=int, default=64, help="--denoiser-loss: text scenes")
    parser.add_argument("--levels", default="0.3,0.5,0.7,0.9", help="--denoiser-loss: noise levels")
    args = parser.parse_args()
    if args.denoiser_loss:
        lengths = {int(n) for n in args.lengths.split(",")}
        levels = [float(x) for x in args.levels.split(",")]
        for row in denoiser_losses(args.model, lengths, args.scenes, levels, args.seed):
            print(json.dumps({"model": args.model, **row}))
        return

    from visalign.models.loading import load_pipeline, sampler_defaults
    from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs

    prompts = text_prompts(args.split, {int(n) for n in args.lengths.split(",")}, args.every)
    family, pipe = load_pipeline(args.model)
    defaults = sampler_defaults(args.model)
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps")
    guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale")
    kwargs = pipeline_kwargs(family, steps, guidance, defaults.get("max_sequence_length"))
    k = args.images_per_prompt
    expected, read, drawn = [], [], []
    for start in range(0, len(prompts), max(1, 32 // k)):
        chunk = prompts[start : start + max(1, 32 // k)]
        seeds = [image_seed(args.seed, start + i, j) for i in range(len(chunk)) for j in range(k)]
        images = generate(pipe, [m["prompt"] for m in chunk for _ in range(k)], seeds, kwargs, len(seeds))
        read += read_digits(images)
        drawn += list(images)
        expected += [m["text"] for m in chunk for _ in range(k)]
    stats = binding_stats(expected, read)
    stats.update(model=args.model, split=args.split, lengths=args.lengths, prompts=len(prompts),
                 steps=steps, guidance=guidance)  # fmt: skip
    print(json.dumps(stats))
    if args.sheet:
        write_sheet(drawn, expected, read, k, args.sheet)


if __name__ == "__main__":
    main()
