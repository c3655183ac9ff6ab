"""The reward hacking check of a trained model: optimise pixels against it, then ask the verifier."""

from __future__ import annotations

import numpy as np
import torch

from visalign.rewards.shapes_rm_model import ShapesRM
from visalign.rewards.shapes_rm_train.agreement import to_tensor
from visalign.rewards.shapes_rm_train.pairs import label
from visalign.seeding import numpy_rng


def _ascend(model: ShapesRM, start: torch.Tensor, texts: list[str], steps: int, lr: float) -> torch.Tensor:
    """Adam on unconstrained pixels (clamped to [0, 1] when scored) maximising the model's soft score."""
    model.eval()
    for p in model.parameters():  # only the pixels are optimised
        p.requires_grad_(False)
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        loss = -torch.sigmoid(model(x.clamp(0, 1), texts)["soft"]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return x.detach().clamp(0, 1)


def pixel_attack(
    model: ShapesRM, prompts: list[dict], steps: int = 40, lr: float = 0.01, seed: int = 0
) -> dict:
    """Reward hacking check: gradient ascent on the pixels of mismatched renders (one per prompt), then the
    model's and the verifier's scores before and after (Adam on unconstrained pixels, clamped to [0, 1])."""
    from visalign.worlds.shapes.mismatch import corrupt
    from visalign.worlds.shapes.render import render_scene

    rng = numpy_rng(seed)
    arrays = np.stack([render_scene(corrupt(md, rng)[1], seed + i) for i, md in enumerate(prompts)])
    texts = [md["prompt"] for md in prompts]
    start = to_tensor(arrays)
    end = _ascend(model, start, texts, steps, lr)
    with torch.no_grad():
        before = torch.sigmoid(model(start, texts)["soft"]).mean().item()
        after = torch.sigmoid(model(end, texts)["soft"]).mean().item()
    end_u8 = (end.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    v0, v1 = label(arrays, prompts, ["x"] * len(prompts)), label(end_u8, prompts, ["x"] * len(prompts))
    return {
        "n": len(prompts), "steps": steps, "lr": lr,
        "rm_before": before, "rm_after": after,
        "verifier_soft_before": float(v0.soft.mean()), "verifier_soft_after": float(v1.soft.mean()),
        "verifier_strict_before": float(v0.strict.mean()), "verifier_strict_after": float(v1.strict.mean()),
        "mean_abs_pixel_change": float((end - start).abs().mean()),
    }  # fmt: skip
