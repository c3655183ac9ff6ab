"""The finished autoencoder's latent factors and its report (``run_dir/vae/vae_report.json``).

``scaling_factor`` / ``shift_factor`` are measured on encoded train images of the denoiser's mixture, the
latents stage 2 will see; the report adds how well test-split scenes survive a round trip (PSNR, and the
verifier's strict score on the reconstructions against the renders themselves).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.data import ShapesData
from visalign.pretrain.evaluation import shapesbench_scores
from visalign.pretrain.export import save_module_folder
from visalign.pretrain.generate import image_seed
from visalign.pretrain.latent_norm import fold_channel_normalization

REPORT_FILE = "vae_report.json"
RECON_CHUNK = 70  # test scenes rendered, encoded and decoded at a time


def measure_vae(cfg: PretrainConfig, vae: Any, data: ShapesData) -> dict[str, Any]:
    """Set the latent factors of ``vae`` from ``data`` and measure its reconstructions of test scenes."""
    report = set_latent_factors(cfg, vae, data)
    report.update(reconstruction_report(cfg, vae))
    return report


def write_vae_folder(vae: Any, out: Path, report: dict[str, Any]) -> None:
    """The stage's result: the diffusers folder of ``vae`` with its report beside the weights."""
    save_module_folder(vae, out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


@torch.no_grad()
def set_latent_factors(cfg: PretrainConfig, vae: Any, data: ShapesData) -> dict[str, Any]:
    """Set ``scaling_factor`` / ``shift_factor`` from encoded train images; the statistics behind them.

    With ``vae.latent_norm: channel`` the per-channel standardisation is first folded into the autoencoder
    (``latent_norm.py``), so the scalar factors come out as about 1 and 0.
    """
    z = _encode_stats_images(cfg, vae, data)
    channel_std_before = None
    if cfg.vae.latent_norm == "channel":
        channel_std = z.std((0, 2, 3))
        channel_std_before = (channel_std / z.std()).tolist()  # in scalar-normalised units
        fold_channel_normalization(vae, z.mean((0, 2, 3)), channel_std)
        z = _encode_stats_images(cfg, vae, data)
    mean, std = z.mean().item(), z.std().item()
    if cfg.family == "flow":  # SD3 pipelines decode z / scale + shift
        shift, scale = mean, 1.0 / std
    else:  # SD1.5 pipelines have no shift: scale by the root mean square
        shift, scale = 0.0, 1.0 / math.sqrt(mean**2 + std**2)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    report: dict[str, Any] = {
        "latent_mean": mean,
        "latent_std": std,
        "scaling_factor": scale,
        "shift_factor": shift,
        "latent_norm": cfg.vae.latent_norm,
    }
    if channel_std_before is not None:
        report["channel_std_under_scalar_norm"] = channel_std_before
    return report


def _encode_stats_images(cfg: PretrainConfig, vae: Any, data: ShapesData) -> torch.Tensor:
    zs = []
    for i in range(0, cfg.vae.stats_images, 64):
        x = data.batch("stats", i, min(64, cfg.vae.stats_images - i)).images
        zs.append(vae.encode(x).latent_dist.mode())
    return torch.cat(zs)


@torch.no_grad()
def reconstruction_report(cfg: PretrainConfig, vae: Any) -> dict[str, Any]:
    """PSNR and verifier scores of ``vae``'s round trip over two scenes of every test prompt."""
    test = ShapesData(cfg.seed + 1, cfg.image_size, tag_balanced=False, split="test")
    items = test.items * 2
    xs, recs = [], []
    for i in range(0, len(items), RECON_CHUNK):
        chunk = items[i : i + RECON_CHUNK]
        x = torch.from_numpy(
            np.stack([_render(m, image_seed(cfg.seed, i + j, 0), cfg.image_size) for j, m in enumerate(chunk)])
        )
        xt = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)
        y = vae.decode(vae.encode(xt).latent_dist.mode()).sample.clamp(-1, 1)
        xs.append(x.numpy())
        recs.append(((y + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    x_all, r_all = np.concatenate(xs), np.concatenate(recs)
    mse = float(np.mean((x_all.astype(np.float64) / 255 - r_all.astype(np.float64) / 255) ** 2))
    report: dict[str, Any] = {"recon_psnr_db": 10 * math.log10(1.0 / max(mse, 1e-12))}
    scores = shapesbench_scores(list(r_all), items)
    truth = shapesbench_scores(list(x_all), items)
    if scores is not None:
        report["recon_strict_overall"] = scores["overall"]
        report["recon_per_tag"] = scores.get("per_tag")
    if truth is not None:
        report["render_strict_overall"] = truth["overall"]
    return report


def _render(metadata: dict, seed: int, size: int) -> np.ndarray:
    from visalign.worlds.shapes.render import render_scene

    return render_scene(metadata, seed, size=size)
