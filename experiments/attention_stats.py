"""Where an SD3-class transformer's image tokens look: attention statistics per layer on noised train scenes.

    python experiments/attention_stats.py MODEL [MODEL ...] [--sigmas 0.2 0.5 0.8] [--scenes 32]

MODEL is an alias (``shapes-flow``) or any SD3 pipeline folder (a pretraining run's ``exports/step-N``). The
script renders ``--scenes`` train-split scenes with their prompts, noises their latents to each sigma on the
straight path, runs the transformer once and reports, per joint-attention layer, over the image-token queries:

* ``near``: attention mass on the 3 x 3 token neighbourhood (uniform attention over image and text tokens puts
  0.09 there on the 8 x 8 grid with 16 text tokens: 7.6 neighbours on average, edges included, of 80 keys),
* ``H``: mean entropy in nats (uniform: log of the number of keys),
* ``text``: mass on the text tokens,
* ``max``: the largest |logit|.

It also reports how distinguishable the position embedding makes the tokens: the cosine similarity of one
token's row with its right-hand neighbour and with the opposite corner.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def layer_stats(query: torch.Tensor, key: torch.Tensor, n_image: int) -> dict[str, float]:
    """Statistics of one joint attention (``[B, heads, tokens, head_dim]``; image tokens first, on a square grid)."""
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    probs = logits.softmax(-1)[:, :, :n_image]  # image-token queries only
    side = math.isqrt(n_image)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    points = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    near = ((points[:, None] - points[None]).abs().amax(-1) <= 1).to(probs.dtype)
    return {
        "near": (probs[..., :n_image] * near).sum(-1).mean().item(),
        "H": -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean().item(),
        "text": probs[..., n_image:].sum(-1).mean().item(),
        "max": logits.abs().amax().item(),
    }


@contextlib.contextmanager
def recording(n_image: int, records: list[dict[str, float]]) -> Iterator[None]:
    """Record ``layer_stats`` of every ``scaled_dot_product_attention`` call made inside the block."""
    original = F.scaled_dot_product_attention

    def spy(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        records.append(layer_stats(query, key, n_image))
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def position_similarity(transformer) -> dict[str, float]:
    """Cosine similarity of the position embedding of a central token with its neighbour and the far corner."""
    rows = F.normalize(transformer.pos_embed.pos_embed[0].float(), dim=-1)
    side = math.isqrt(rows.shape[0])
    centre = (side // 2 - 1) * side + side // 2 - 1
    return {"adjacent": (rows[centre] @ rows[centre + 1]).item(), "corner": (rows[0] @ rows[-1]).item()}


def model_stats(model: str, sigmas: list[float], scenes: int, seed: int = 0) -> dict:
    from visalign.models.loading import load_pipeline
    from visalign.pretrain.data import ShapesData
    from visalign.pretrain.losses import encode_text
    from visalign.pretrain.prefetch import encode_normalised

    family, pipe = load_pipeline(model)
    if family != "flow":
        raise SystemExit(f"{model}: attention_stats reads SD3-class (flow) transformers, not {family}")
    transformer, vae = pipe.transformer.float(), pipe.vae.float()
    batch = ShapesData(seed=seed).batch("denoiser", 0, scenes)
    with torch.no_grad():
        z = encode_normalised(vae, batch.images)
        cond = encode_text(pipe, "flow", batch.prompts)
    n_image = (z.shape[-1] // transformer.config.patch_size) ** 2
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    out: dict = {"model": model, "position": position_similarity(transformer), "sigmas": {}}
    for sigma in sigmas:
        records: list[dict[str, float]] = []
        with torch.no_grad(), recording(n_image, records):
            transformer(
                hidden_states=(1 - sigma) * z + sigma * noise,
                timestep=torch.full((scenes,), sigma * 1000.0),
                **cond,
            )
        out["sigmas"][sigma] = records
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    parser.add_argument("--scenes", type=int, default=32)
    args = parser.parse_args(argv)
    results = []
    for model in args.models:
        stats = model_stats(model, args.sigmas, args.scenes)
        pos = stats["position"]
        print(
            f"{model}: position cosine adjacent {pos['adjacent']:.3f}, opposite corners {pos['corner']:.3f}"
        )
        for sigma, layers in stats["sigmas"].items():
            cells = " | ".join(
                f"L{i} near {s['near']:.2f} H {s['H']:.2f} text {s['text']:.2f} max {s['max']:.1f}"
                for i, s in enumerate(layers)
            )
            print(f"  sigma {sigma}: {cells}")
        results.append(stats)
    return results


if __name__ == "__main__":
    from visalign.errors import exit_on_user_error

    exit_on_user_error(main)  # a missing or incomplete model folder: one line, no traceback
