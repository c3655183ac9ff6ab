"""A model family the library has never seen runs through the one training loop with no algorithm edit.

``ToyGenerator`` is a test double family: no diffusers pipeline, an MLP denoiser on 4 x 2 x 2 latents, a
continuous cosine (variance-preserving) noise path abar(tau) = cos^2(pi/2 (0.02 + 0.96 tau)) with epsilon
prediction, its own text encoder (a fixed hash embedding) and decoder. It is one adapter class and one
``register_family`` line. Every algorithm that is not limited to a family (likelihood, forward-process, reward
back-propagation and preference algorithms) must train it, resume it exactly, and reach the family's math only
through the adapter: the forward-process and x0 methods below are checked against closed forms and are the only
place that math is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from engine_fixtures import Brightness
from visalign.config import load_train_config
from visalign.errors import UserError
from visalign.models import Generator, Schedule, families, register_family
from visalign.sampling import build_kernel
from visalign.sampling.base import per_sample
from visalign.trainer import Trainer

torch.set_num_threads(1)

LATENT = (4, 2, 2)
EMBED = 8


def abar_of(tau: torch.Tensor) -> torch.Tensor:
    return torch.cos(math.pi / 2 * (0.02 + 0.96 * tau)) ** 2


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        size = math.prod(LATENT)
        self.net = nn.Sequential(nn.Linear(size + 1 + EMBED, 32), nn.SiLU(), nn.Linear(32, size))

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), t.float()[:, None] / 1000, embeds], dim=1)
        return self.net(h).view_as(x)


class ToyPipeline:
    def __init__(self, seed: int = 0) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser = ToyNet()
        self.components = {"denoiser": self.denoiser}

    def to(self, device) -> ToyPipeline:
        self.denoiser.to(device)
        return self


class ToyGenerator(Generator):
    family = "toy"
    deterministic_kernel = "ddim"

    def __init__(self, pipeline, device="cpu", negative_prompt: str = "", **_options) -> None:
        super().__init__(pipeline, device, negative_prompt)

    @property
    def denoiser(self) -> nn.Module:
        return self.pipeline.denoiser

    def latent_shape(self):
        return LATENT

    def _encode_batch(self, prompts, with_negative):
        rows = []
        for p in prompts:
            digest = hashlib.sha256(p.encode()).digest()[:EMBED]
            rows.append(torch.tensor([b / 255 - 0.5 for b in digest]))
        return {"embeds": torch.stack(rows).to(self.device)}, None

    def _forward(self, net, x, t, cond):
        return net(x, t, cond["embeds"])

    def decode(self, latents):
        return torch.sigmoid(torch.nn.functional.interpolate(latents[:, :3].float(), scale_factor=4))

    def encode_images(self, images, batch_size: int = 16):
        z = torch.logit(torch.nn.functional.avg_pool2d(images.float(), 4).clamp(1e-4, 1 - 1e-4))
        return torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)

    def schedule(self, num_steps):
        taus = torch.linspace(1.0, 0.0, num_steps + 1)
        return Schedule(t_model=taus[:-1] * 1000, c=abar_of(taus[:-1]), c_next=abar_of(taus[1:]))

    def make_kernel(self, name, noise_level, schedule, noise_pool=1):
        if name != "ddim":
            raise UserError(f"sampler kernel '{name}' does not apply to toy models (ddim)")
        return build_kernel("ddim", noise_level=noise_level, prediction_type="epsilon", noise_pool=noise_pool)

    # the family's forward process: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, the network predicts eps
    def noise_level_at(self, tau):
        return tau * 1000, abar_of(tau)

    def add_noise(self, x0, noise, c):
        a = per_sample(c.float(), x0)
        return a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()

    def regression_target(self, x0, noise, c):
        return noise.float(), torch.ones(x0.shape[0], device=x0.device)

    def x0_from_output(self, x, out, c):
        a = per_sample(c.float(), x)
        return (x.float() - (1 - a).sqrt() * out.float()) / a.sqrt()


if "toy" not in families():
    register_family("toy", ToyGenerator)  # the family's one registry line


def _trainer(tmp_path: Path, algorithm: str, extra=(), name: str = "run") -> Trainer:
    cfg = load_train_config(None, [
        f"run_dir={tmp_path / name}", "eval.enabled=false", "log.progress=false", "data.prompts_per_iter=2",
        "data.group_size=4", "sampling.num_steps=4", "sampling.kernel=ddim", "sampling.noise_level=1.0",
        "finetune.mode=full", "train.lr=1e-2", "train.iterations=2", "checkpoint.every=1",
        f"algorithm.name={algorithm}", *extra])
    return Trainer(cfg, pipeline=("toy", ToyPipeline(seed=0)), rewards=[(Brightness(), 1.0)])


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ---- the family's math, against closed forms --------------------------------------------------------------------


def test_the_toy_forward_process_and_x0_are_the_closed_forms():
    gen = ToyGenerator(ToyPipeline())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, *LATENT, generator=g), torch.randn(3, *LATENT, generator=g)
    tau = torch.tensor([0.1, 0.5, 0.9])
    t_model, c = gen.noise_level_at(tau)
    for i in range(3):
        a = math.cos(math.pi / 2 * (0.02 + 0.96 * float(tau[i]))) ** 2
        assert float(c[i]) == pytest.approx(a, rel=1e-6) and float(t_model[i]) == pytest.approx(1000 * float(tau[i]))
        x_t = gen.add_noise(x0, eps, c)[i]
        torch.testing.assert_close(x_t, math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i])
        # the exact eps recovers the exact x_0
        torch.testing.assert_close(gen.x0_from_output(gen.add_noise(x0, eps, c), eps, c)[i], x0[i], atol=1e-5,
                                   rtol=1e-5)


# ---- every family-agnostic algorithm trains it ------------------------------------------------------------------

AGNOSTIC = {  # algorithm -> extra overrides
    "dpok": [],
    "rwr": [],
    "raft": [],
    "refl": ["sampling.noise_level=0.0"],
    "draft": ["sampling.noise_level=0.0"],
    "alignprop": ["sampling.noise_level=0.0"],
    "diffusion_dpo": [],
    "diffusion_kto": [],
}


@pytest.mark.parametrize("algorithm", sorted(AGNOSTIC))
def test_a_new_family_trains_with_every_family_agnostic_algorithm(tmp_path, algorithm):
    tr = _trainer(tmp_path, algorithm, AGNOSTIC[algorithm])
    before = {n: p.detach().clone() for n, p in tr.generator.named_trainable()}
    summary = tr.run()
    rows = _rows(tmp_path / "run")
    assert summary["finished"] and len(rows) == 2
    assert all(math.isfinite(r["loss"]) for r in rows)
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in tr.generator.named_trainable())
    assert moved > 0, f"{algorithm} did not change the toy model's weights"


def test_a_new_family_resumes_bit_for_bit(tmp_path):
    straight = _trainer(tmp_path, "dpok", name="straight")
    straight.run()
    first = _trainer(tmp_path, "dpok", ["stop_after=1"], name="cut")
    first.run()
    resumed = _trainer(tmp_path, "dpok", ["resume=auto"], name="cut")
    resumed.run()
    a, b = dict(straight.generator.named_trainable()), dict(resumed.generator.named_trainable())
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert [r["loss"] for r in _rows(tmp_path / "straight")] == [r["loss"] for r in _rows(tmp_path / "cut")]


def test_an_algorithm_limited_to_a_family_refuses_the_new_one(tmp_path):
    with pytest.raises(UserError, match="'toy'"):
        _trainer(tmp_path, "ddpo")


def test_no_algorithm_file_branches_on_the_model_family():
    """The family's math lives in its adapter: no algorithm reads ``.family`` or a scheduler's internals."""
    folder = Path(__file__).resolve().parents[1] / "src" / "visalign" / "algorithms"
    pattern = re.compile(r"\.family\b|\.scheduler\b|alphas_cumprod|predicts_sample|prediction_type")
    offenders = [f"{p.name}:{i}" for p in sorted(folder.glob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line.split("#")[0]) and not line.lstrip().startswith(('"', "*", "-"))]
    assert offenders == []
