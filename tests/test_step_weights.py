"""``step_weighting="output_normalized"``: DDIM weights by hand, and DDPO applying them per sample."""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import perturb, tiny_generator
from visalign.algorithms import build_algorithm
from visalign.algorithms._policy_gradient import raw_step_weights
from visalign.algorithms.base import RunContext
from visalign.rollout import RolloutPlan, run_rollout
from visalign.sampling.ddim import DDIM

PROMPTS = ["a red circle", "two blue squares"]


def _sd15_ten_steps() -> tuple[torch.Tensor, torch.Tensor]:
    """SD1.5's scaled-linear schedule (beta 0.00085 .. 0.012), DDIM's 10 timesteps 999, 899, ..., 99."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(999, 0, -100)
    c = abar[t]
    c_next = torch.where(t - 100 >= 0, abar[(t - 100).clamp_min(0)], torch.ones_like(c))
    return c, c_next


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_output_normalized_ddim_weights_by_hand(prediction_type):
    eta = 0.5
    c, c_next = _sd15_ten_steps()
    std = eta * torch.sqrt((1 - c_next) / (1 - c) * (1 - c / c_next))
    direction = torch.sqrt(1 - c_next - std**2)
    if prediction_type == "sample":  # mean = sqrt(ab') x0 + direction (x - sqrt(ab) x0) / sqrt(1 - ab)
        gain = torch.sqrt(c_next) - direction * torch.sqrt(c) / torch.sqrt(1 - c)
    else:  # mean = sqrt(ab') (x - sqrt(1 - ab) eps) / sqrt(ab) + direction eps
        gain = direction - torch.sqrt(c_next) * torch.sqrt(1 - c) / torch.sqrt(c)
    trained = std > 0  # the last step (to ab' = 1) is deterministic
    expected = (std / gain.abs())[trained]
    kernel = DDIM(eta, prediction_type)
    got = raw_step_weights("output_normalized", kernel, c.float(), c_next.float())[trained.tolist()]
    torch.testing.assert_close(got.double(), expected, rtol=2e-4, atol=0)
    sensitivity = (gain.abs() / std)[trained]  # log-prob change per unit output, first step vs ninth
    if prediction_type == "sample":
        assert sensitivity[-1] / sensitivity[0] == pytest.approx(23.3, abs=0.1)
    else:
        assert 0.6 < float(sensitivity[-1] / sensitivity[0]) < 1.0


def test_ddpo_applies_the_normalised_weights_per_sample():
    gen = tiny_generator("diffusion")
    perturb(gen, 0.05)
    schedule = gen.schedule(6)
    kernel = gen.make_kernel("ddim", 1.0, schedule)
    weighted = build_algorithm("ddpo", {"step_weighting": "output_normalized", "clip_range": 1e-3})
    plain = build_algorithm("ddpo", {"clip_range": 1e-3})
    for algo in (weighted, plain):
        algo.bind(RunContext(schedule=schedule, kernel=kernel, deterministic_kernel=kernel, seed=0))
    prompts = [p for p in PROMPTS for _ in range(3)]
    ids = torch.arange(2).repeat_interleave(3)
    r = run_rollout(gen, schedule, kernel, prompts, [{} for _ in prompts], ids, list(range(len(prompts))),
                    RolloutPlan(num_train_steps=2))  # a random pair of steps per sample, so samples sit at different steps
    perturb(gen, 0.03, seed=11)  # the policy moves after the rollout
    r.advantages = torch.linspace(-2, 2, len(r))
    r.mask = torch.ones(len(r), dtype=torch.bool)
    idx = torch.arange(len(r))
    batch = r.step_batch(idx, 0)
    assert len(set(batch.step_index.tolist())) > 1
    trainable = kernel.trainable(schedule.c, schedule.c_next)
    raw_all = raw_step_weights("output_normalized", kernel, schedule.c[trainable], schedule.c_next[trainable])
    w = raw_step_weights("output_normalized", kernel, batch.c, batch.c_next) / raw_all.mean()
    per_sample = torch.stack([plain.loss(r.step_batch(idx[i : i + 1], 0), gen)[0] for i in range(len(r))])
    loss, m = weighted.loss(batch, gen)
    torch.testing.assert_close(loss.detach(), (w * per_sample.detach()).mean(), rtol=1e-4, atol=1e-7)
    assert m["step_weight/mean"] == pytest.approx(float(w.mean()), rel=1e-5)
