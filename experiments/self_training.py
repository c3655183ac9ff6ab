"""Supervised LoRA fine-tuning of a flow base on rendered scenes or on its own samples: does it hold or collapse?

    python experiments/self_training.py [--model shapes-flow] [--data renders|own] [--space native|velocity] \
        [--lr 1e-3] [--steps 150] [--batch 32] [--eval-every 50]

The forward-process algorithms (RAFT, RWR, AWM, DiffusionNFT, Diffusion-DPO) regress the network on noised copies
of the policy's own final samples. This script isolates that regression from any reward: each step takes a batch
of train-split prompts, its clean latents either rendered by ShapesWorld and encoded (``renders``: ordinary
fine-tuning on the data the base was trained on) or sampled by the current weights with the deterministic
sampler (``own``: RAFT with every sample kept), noises them with ``algorithms._forward_process.forward_noise``
(sigma uniform in [0, 1]) and takes one AdamW step on the LoRA (rank 16, the attention projections) with
``regression_loss``. ``--space velocity`` divides that loss by its weight, i.e. the velocity error whatever the
network predicts (what the engine used before x_0 transformers were regressed in their own output space).

It prints the batch loss every 10 steps and the ShapesBench strict score of the test split (2 images per prompt,
seed 0, 20 steps, no guidance) every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-flow")
    parser.add_argument("--data", choices=["renders", "own"], default="renders")
    parser.add_argument("--space", choices=["native", "velocity"], default="native")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    from visalign.algorithms._forward_process import forward_noise, regression_loss
    from visalign.eval.shapesbench import score_images
    from visalign.models import build_generator
    from visalign.models.base import FinetuneSpec
    from visalign.models.loading import load_pipeline
    from visalign.pretrain.data import ShapesData
    from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs
    from visalign.pretrain.prefetch import encode_normalised
    from visalign.worlds.shapes.prompts import load_split

    torch.set_num_threads(args.threads)
    family, pipe = load_pipeline(args.model)
    if family != "flow":
        sys.exit(f"{args.model}: a flow (SD3) pipeline is needed, got {family}")
    generator = build_generator("flow", pipe, max_sequence_length=0)
    torch.manual_seed(0)  # the LoRA initialisation
    generator.setup_finetune(FinetuneSpec(mode="lora", rank=16, alpha=16))
    optimizer = torch.optim.AdamW(generator.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    data = ShapesData(0, pipe.vae.config.sample_size)

    items = load_split("test")
    k = args.images_per_prompt
    test_prompts = [m["prompt"] for m in items for _ in range(k)]
    test_meta = [m for m in items for _ in range(k)]
    test_seeds = [image_seed(0, p, j) for p in range(len(items)) for j in range(k)]

    def evaluate() -> float:
        images = generate(pipe, test_prompts, test_seeds, pipeline_kwargs("flow", 20, 1.0, 0), batch_size=70)
        return float(score_images(list(images), test_meta)["overall"])

    rows: list[dict] = [{"step": 0, "eval": evaluate()}]
    print(f"step 0: held-out strict {rows[0]['eval']:.3f}", flush=True)
    noise_gen = torch.Generator().manual_seed(1)
    for step in range(1, args.steps + 1):
        batch = data.batch("denoiser", 10**6 + step, args.batch)  # steps no pretraining run reaches
        with torch.no_grad():
            if args.data == "own":
                x0 = pipe(prompt=batch.prompts, num_inference_steps=10, guidance_scale=1.0, max_sequence_length=0,
                          output_type="latent", generator=torch.Generator().manual_seed(step)).images
            else:
                x0 = encode_normalised(pipe.vae, batch.images)
        seeds = torch.randint(0, 2**62, (args.batch,), generator=noise_gen)
        noised = forward_noise(x0, seeds, generator, "uniform", 0.0, 1.0)
        prediction = generator.predict(noised.x_t, noised.t_model, generator.encode(batch.prompts), 1.0)
        per_sample = regression_loss(prediction, noised)
        if args.space == "velocity":
            per_sample = per_sample / noised.weight
        loss = per_sample.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        row: dict = {"step": step, "loss": float(loss.detach())}
        if step % 10 == 0:
            print(f"step {step}: loss {row['loss']:.4g}", flush=True)
        if args.eval_every and step % args.eval_every == 0:
            row["eval"] = evaluate()
            print(f"step {step}: held-out strict {row['eval']:.3f}", flush=True)
        rows.append(row)
    result = {"args": vars(args), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
