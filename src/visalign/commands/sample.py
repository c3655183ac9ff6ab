"""``visalign sample``: images from a diffusers SD3 / SD1.5 folder (or a shipped alias) in GenEval's layout.

    visalign sample --model shapes-flow --split test --images-per-prompt 4 --seed 0 --out samples/flow

writes ``OUT/00000/metadata.jsonl`` and ``OUT/00000/samples/0000.png`` ... (one folder per prompt), which
``visalign eval OUT`` scores. Sampling goes through the diffusers pipeline itself, one seeded
``torch.Generator`` per image (seed of image k of prompt p: ``visalign.pretrain.generate.image_seed``), so
any image can be regenerated with the pipeline alone. Steps / guidance / ``max_sequence_length`` default to
the values stored in the folder's ``visalign.json`` (the model card's sampler), else to the pipeline's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visalign.commands._args import finite_float, nonnegative_int, output_folder, positive_int

NAME = "sample"
HELP = "sample images from a diffusers pipeline folder into GenEval layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a diffusers folder, or shapes-flow / shapes-diffusion")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="a file: GenEval metadata JSONL (.jsonl) or one prompt per line")
    src.add_argument("--split", choices=["train", "test", "iid"], help="a ShapesWorld prompt split")
    parser.add_argument("--images-per-prompt", type=positive_int, default=4)
    parser.add_argument("--steps", type=positive_int, default=None, help="default: the model's visalign.json")
    parser.add_argument("--guidance", type=finite_float, default=None, help="default: the model's visalign.json")
    parser.add_argument("--max-sequence-length", type=nonnegative_int, default=None, help="SD3 only: zero T5 tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--out", required=True, type=output_folder, help="output folder (GenEval layout)")


def read_prompts(args: argparse.Namespace) -> list[dict]:
    """The metadata dicts to sample: one per prompt."""
    from visalign.errors import UserError

    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty")
        return [{"prompt": args.prompt}]
    if args.split is not None:
        from visalign.worlds.shapes.prompts import load_split

        return load_split(args.split)
    path = Path(args.prompts)
    if path.suffix == ".jsonl":
        from visalign.worlds.shapes.prompts import load_prompt_file

        return load_prompt_file(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read prompt file ({err.strerror or err})") from None
    prompts = [{"prompt": ln} for ln in lines if ln]
    if not prompts:
        raise UserError(f"{path}: no prompts in file")
    return prompts


def _sampler_settings(args: argparse.Namespace, defaults: dict) -> tuple[int | None, float | None, int | None]:
    """(steps, guidance, max_sequence_length): each flag where given, else the model card's value (or None)."""

    def pick(flag: int | float | None, key: str) -> int | float | None:
        return flag if flag is not None else defaults.get(key)

    return (
        pick(args.steps, "num_inference_steps"),
        pick(args.guidance, "guidance_scale"),
        pick(args.max_sequence_length, "max_sequence_length"),
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from visalign.eval.geneval_layout import write_prompt_folder
    from visalign.models.loading import load_pipeline, sampler_defaults
    from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs
    from visalign.report.progress import task_progress

    if args.threads:
        torch.set_num_threads(args.threads)
    metadata = read_prompts(args)
    family, pipe = load_pipeline(args.model)
    steps, guidance, max_len = _sampler_settings(args, sampler_defaults(args.model))
    kwargs = pipeline_kwargs(family, steps, guidance, max_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k = args.images_per_prompt
    per_call = max(1, args.batch_size // k)  # whole prompts per pipeline call
    with task_progress(console=Console(), eta=False) as progress:  # stdout: stderr is for the one-line errors
        task = progress.add_task("sample", total=len(metadata) * k)
        for start in range(0, len(metadata), per_call):
            chunk = metadata[start : start + per_call]
            prompts = [md["prompt"] for md in chunk for _ in range(k)]
            seeds = [image_seed(args.seed, start + i, j) for i in range(len(chunk)) for j in range(k)]
            images = generate(pipe, prompts, seeds, kwargs, batch_size=len(prompts))
            for i, md in enumerate(chunk):
                write_prompt_folder(out, start + i, md, list(images[i * k : (i + 1) * k]))
            progress.update(task, advance=len(prompts))
    info = {
        "model": str(args.model),
        "family": family,
        "seed": args.seed,
        "images_per_prompt": k,
        "prompts": len(metadata),
        "sampler": {"steps": steps, "guidance": guidance, "max_sequence_length": max_len},
        "image_seed": "visalign.pretrain.generate.image_seed(seed, prompt_index, image_index)",
    }
    (out / "sample_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {len(metadata) * k} images for {len(metadata)} prompts to {out}")
    return 0
