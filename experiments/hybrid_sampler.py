"""Which noise range a denoiser loses its score in: sample with one model above a switch sigma, another below.

    python experiments/hybrid_sampler.py FLOW UNET [--other UNET2] [--switch 0.3,0.6] [--steps 20]

FLOW is an SD3-class folder (v or x0 prediction) and UNET an SD1.5-class folder that share one autoencoder
(``vae.init_from``), so the UNet's estimates map into the flow model's latent space exactly as the distillation
teacher's do (``visalign.pretrain.teacher``). One Euler sampler on the straight path runs over ``--steps``
uniform sigmas from 1 to 0; at each step the x0 estimate comes from the "first" model while sigma > switch
and from the "second" model below, and both orders are sampled (the UNet is queried at min(sigma, 0.93),
inside its training schedule). With ``--other``, a second UNet plays the flow model's part, for comparison at
the same training step. The test split, 2 images per prompt, the same noise for every row; printed: the
ShapesBench strict overall score per order and switch (switch 0: the first model alone).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

X0Fn = Callable[[torch.Tensor, float], torch.Tensor]


def flow_x0(pipe, cond: dict) -> X0Fn:  # noqa: ANN001 - diffusers pipeline
    predicts_sample = pipe.scheduler.config.get("prediction_type") == "sample"

    def x0(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), sigma * 1000)
        out = pipe.transformer(hidden_states=x, timestep=t, return_dict=False, **cond)[0]
        return out if predicts_sample else x - sigma * out

    return x0


def unet_x0(teacher, prompts: list[str]) -> X0Fn:  # noqa: ANN001 - DiffusionTeacher
    def x0(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return teacher.x0(x, torch.full((x.shape[0],), min(sigma, 0.93)), prompts)[0]

    return x0


def sample(first: X0Fn, second: X0Fn, switch: float, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Euler on x_s = x0 + s * eps: x_{s'} = x0_hat + (s' / s) (x_s - x0_hat)."""
    sigmas = torch.linspace(1, 0, steps + 1).tolist()
    x = noise.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x0 = first(x, s) if s > switch else second(x, s)
        x = x0 + (s_next / s) * (x - x0)
    return x


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flow")
    parser.add_argument("unet")
    parser.add_argument("--other", help="a second UNet folder that takes the flow model's part")
    parser.add_argument("--switch", default="0.3,0.6")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from visalign.models.loading import load_pipeline
    from visalign.pretrain.evaluation import shapesbench_scores as _score
    from visalign.pretrain.losses import decode_normalised, encode_text
    from visalign.pretrain.teacher import DiffusionTeacher
    from visalign.worlds.shapes.prompts import load_split

    _, flow = load_pipeline(args.flow)
    metadata = [m for m in load_split("test") for _ in range(2)]
    prompts = [m["prompt"] for m in metadata]
    unet = unet_x0(DiffusionTeacher(load_pipeline(args.unet)[1], flow.vae, args.unet), prompts)
    if args.other:
        model = unet_x0(DiffusionTeacher(load_pipeline(args.other)[1], flow.vae, args.other), prompts)
    else:
        model = flow_x0(flow, encode_text(flow, "flow", prompts))
    c, h, w = flow.vae.config.latent_channels, flow.transformer.config.sample_size, flow.transformer.config.sample_size
    noise = torch.randn(len(prompts), c, h, w, generator=torch.Generator().manual_seed(args.seed))
    def strict(latents: torch.Tensor) -> float:
        images = decode_normalised(flow.vae, latents).clamp(-1, 1).add(1).mul(127.5).round().byte()
        return round(_score(list(images.permute(0, 2, 3, 1).numpy()), metadata)["overall"], 3)

    name = args.other or args.flow
    for switch in [0.0, *(float(s) for s in args.switch.split(","))]:
        for order, (first, second) in {"model_then_unet": (model, unet), "unet_then_model": (unet, model)}.items():
            if switch == 0.0 and order == "unet_then_model":
                continue  # the UNet alone: the reference row below
            score = strict(sample(first, second, switch, noise, args.steps))
            print(json.dumps({"model": name, "order": order, "switch": switch, "strict": score}), flush=True)
    score = strict(sample(unet, unet, 0.0, noise, args.steps))
    print(json.dumps({"model": args.unet, "order": "unet_alone", "switch": None, "strict": score}))


if __name__ == "__main__":
    main()
