"""DPOK: the loss against hand computations (diffusion DDIM eta = 1 and Flow-SDE), the exact per-step Gaussian KL, KL
zero at the reference, the first-inner-step invariant, training end to end, and the recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from engine_fixtures import Brightness, flow_sde_by_hand, linear_decode, perturb, tiny_generator
from visalign.algorithms import build_algorithm
from visalign.config import load_train_config
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.rollout import run_rollout
from visalign.trainer import Trainer

torch.set_num_threads(1)
PROMPTS = ["a red circle", "two blue squares"]
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "dpok_shapes.yaml"


def _rollout(gen, family, steps=4, group=3):
    schedule = gen.schedule(steps)
    kernel = gen.make_kernel("ddim" if family == "diffusion" else "sde", 1.0 if family == "diffusion" else 0.7,
                             schedule)
    prompts = [p for p in PROMPTS for _ in range(group)]
    ids = torch.arange(len(PROMPTS)).repeat_interleave(group)
    r = run_rollout(gen, schedule, kernel, prompts, [{} for _ in prompts], ids, list(range(len(prompts))))
    r.advantages = torch.linspace(-1.5, 1.5, len(r))
    r.mask = torch.ones(len(r), dtype=torch.bool)
    r.mask[2] = False
    return r, schedule


def _ddim_by_hand(gen, batch, eta=1.0):
    """DDIM-eta mean and std of the batch's step (epsilon prediction), from the network's output."""
    with torch.no_grad():
        eps = gen.predict(batch.x, batch.t_model, batch.cond)
    ab, ab_prev = batch.c.view(-1, 1, 1, 1), batch.c_next.view(-1, 1, 1, 1)
    x0 = (batch.x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
    std = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
    mean = torch.sqrt(ab_prev) * x0 + torch.sqrt(1 - ab_prev - std**2) * eps
    return mean, std


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_dpok_loss_by_hand(family):
    gen = tiny_generator(family)
    r, schedule = _rollout(gen, family)
    algo = build_algorithm("dpok", {"kl_beta": 0.3, "clip_range": 1e-3})
    batch = r.step_batch(torch.arange(len(r)), 0)
    _, m0 = algo.loss(batch, gen)
    assert m0["kl"] == 0.0  # fresh LoRA (B = 0): the policy is the pretrained model, the KL is exactly 0
    perturb(gen, 0.02 if family == "flow" else 0.05, seed=7)
    loss, m = algo.loss(batch, gen)

    def step(g):
        return _ddim_by_hand(g, batch) if family == "diffusion" else flow_sde_by_hand(g, batch, float(schedule.c[1]))

    mu, std = step(gen)
    with gen.reference():
        mu_ref, _ = step(gen)
    s = std.view(-1, 1, 1, 1).expand_as(mu)
    logp = Normal(mu, s).log_prob(batch.x_next).mean(dim=(1, 2, 3))
    rho = torch.exp(logp - batch.old_log_prob)
    a = batch.advantages
    pg = torch.maximum(-a * rho, -a * rho.clamp(1 - 1e-3, 1 + 1e-3)) * batch.mask
    # the exact KL(p_theta(x'|x) || p_pre(x'|x)) of the two step Gaussians (same std), averaged over data dims
    kl = kl_divergence(Normal(mu, s), Normal(mu_ref, s)).mean(dim=(1, 2, 3)) * batch.mask
    assert m["kl"] > 0
    torch.testing.assert_close(loss.detach(), pg.mean() + 0.3 * kl.mean(), rtol=1e-4, atol=1e-7)
    loss.backward()
    assert all(p.grad is not None for p in gen.trainable_parameters())


def test_dpok_flow_kl_keeps_the_steps_dt_unlike_flow_grpo():
    """On the same Flow-SDE step, DPOK's KL is Flow-GRPO's (which leaves dt out of the variance) divided by -dt."""
    gen = tiny_generator("flow")
    r, _ = _rollout(gen, "flow")
    perturb(gen, 0.02, seed=7)
    idx = torch.arange(len(r))
    step = r.step_index[0, 1].item()
    rows = (r.step_index[:, 1] == step).nonzero().flatten()  # samples that stored the same step in slot 1
    batch = r.step_batch(idx[rows], 1)
    beta = 1.0
    _, m_dpok = build_algorithm("dpok", {"kl_beta": beta}).loss(batch, gen)
    _, m_fg = build_algorithm("flow_grpo", {"kl_beta": beta}).loss(batch, gen)
    minus_dt = float(batch.c[0] - batch.c_next[0])
    assert m_dpok["kl"] == pytest.approx(m_fg["kl"] / minus_dt, rel=1e-4)


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_first_inner_step_ratio_is_one(family):
    gen = tiny_generator(family)
    perturb(gen, 0.05, seed=3)
    r, _ = _rollout(gen, family)
    algo = build_algorithm("dpok", {"kl_beta": 0.1})
    worst = 0.0
    for idx in (torch.tensor([4, 0, 2]), torch.arange(len(r))):
        for batch in algo.micro_batches(r, idx):
            _, m = algo.loss(batch, gen)
            worst = max(worst, m["log_ratio_abs_max"])
    assert worst < 1e-5


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_dpok_trains_end_to_end(tmp_path, family):
    overrides = [f"run_dir={tmp_path / 'run'}", "eval.enabled=false", "log.progress=false", "data.prompts_per_iter=2",
                 "data.group_size=4", "sampling.num_steps=4", "checkpoint.every=0", "train.iterations=2",
                 "train.lr=1e-2", "algorithm.name=dpok", "algorithm.options.clip_range=0.1",
                 "algorithm.options.kl_beta=0.01", "sampling.train_steps=2"]
    if family == "diffusion":
        overrides += ["model.name=shapes-diffusion", "sampling.kernel=ddim", "sampling.noise_level=1.0"]
        pipe = build_diffusion_pipeline(seed=0)
    else:
        overrides += ["model.max_sequence_length=0", "sampling.kernel=sde"]
        pipe = build_flow_pipeline(seed=0)
    tr = Trainer(load_train_config(None, overrides), pipeline=(family, pipe), rewards=[(Brightness(), 1.0)])
    if family == "flow":
        tr.generator.decode = linear_decode
    tr.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert max(r["first_step_log_ratio"] for r in rows) < 1e-5
    # iteration 1 starts at the pretrained model (KL 0); after its update the policy has moved away
    assert rows[0]["kl"] < rows[1]["kl"] and rows[1]["kl"] > 0
    assert any(v.abs().sum() > 0 for k, v in tr.generator.trainable_state_dict().items() if "lora_B" in k)


def test_recipe_loads_and_builds():
    cfg = load_train_config(RECIPE, [])
    algo = build_algorithm(cfg.algorithm.name, cfg.algorithm.options)
    assert cfg.algorithm.name == "dpok" and cfg.model.name == "shapes-diffusion"
    assert cfg.sampling.kernel == "ddim" and cfg.sampling.noise_level == 1.0 and cfg.sampling.kernel in algo.kernels
    assert algo.options.kl_beta > 0
