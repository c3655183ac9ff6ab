"""Algorithm math against hand computations and closed forms; reference model; the ratio-1 invariant."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from engine_fixtures import perturb, tiny_generator
from visalign.algorithms import build_algorithm, register_algorithm
from visalign.algorithms.base import Algorithm
from visalign.algorithms.common import gaussian_mean_kl, kl_estimate, ppo_clip
from visalign.errors import UserError
from visalign.models import build_generator
from visalign.pretrain.build import build_flow_pipeline
from visalign.rollout import RolloutPlan, run_rollout

torch.set_num_threads(1)
PROMPTS = ["a red circle", "two blue squares", "a green triangle above a star"]


def test_ppo_clip_by_hand():
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    ratio = torch.tensor([1.5, 0.5, 1.0 + 5e-5, 1.0 - 5e-5])
    loss, r = ppo_clip(adv, ratio.log(), clip_range=0.2)
    # A>0, rho>1+eps: clipped term -A(1.2) is larger -> -1.2 ; A<0, rho<1-eps: -A*0.8 = 0.8 vs -A*0.5 = 0.5 -> 0.8
    # inside the range both terms agree: -A rho
    expected = torch.tensor([-1.2, 0.8, -2.0 * (1 + 5e-5), 2.0 * (1 - 5e-5)])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r, ratio)


def test_gaussian_mean_kl_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mu, mu_ref = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    std = torch.tensor([0.3, 1.7])
    s = std.view(2, 1, 1, 1).expand_as(mu)
    expected = kl_divergence(Normal(mu, s), Normal(mu_ref, s)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_mean_kl(mu, mu_ref, std), expected, rtol=1e-5, atol=1e-6)
    assert gaussian_mean_kl(mu, mu, std).abs().max() == 0


def test_kl_estimators_by_hand():
    lp, lr = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_estimate(lp, lr, "k1").item() == pytest.approx(0.5)
    assert kl_estimate(lp, lr, "k2").item() == pytest.approx(0.125)
    assert kl_estimate(lp, lr, "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    assert kl_estimate(lp, lp, "k3").item() == 0


def test_lora_reference_is_the_base_model_and_full_reference_is_frozen():
    base = build_generator("flow", build_flow_pipeline(seed=0), max_sequence_length=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *base.latent_shape(), generator=g)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        expected = base.predict(x, t, base.encode(PROMPTS[:2]))
    for mode in ("lora", "full"):
        gen = tiny_generator("flow", mode)
        perturb(gen, 0.05 if mode == "lora" else 0.01)
        cond = gen.encode(PROMPTS[:2])
        with torch.no_grad():
            policy = gen.predict(x, t, cond)
            with gen.reference():
                ref = gen.predict(x, t, cond)
            after = gen.predict(x, t, cond)
        assert torch.equal(ref, expected), mode
        assert not torch.allclose(policy, expected), mode
        assert torch.equal(after, policy), mode  # the context restores the policy


def _rollout(gen, kernel_name="sde", noise=0.7, steps=6, n_prompts=2, group=4, guidance=1.0):
    schedule = gen.schedule(steps)
    kernel = gen.make_kernel(kernel_name, noise, schedule)
    prompts = [p for p in PROMPTS[:n_prompts] for _ in range(group)]
    ids = torch.arange(n_prompts).repeat_interleave(group)
    r = run_rollout(gen, schedule, kernel, prompts, [{} for _ in prompts], ids, list(range(len(prompts))),
                    RolloutPlan(guidance_scale=guidance))
    return r


def test_cfg_is_the_guided_combination_and_replays_exactly():
    gen = tiny_generator("flow")
    perturb(gen)
    x = torch.randn(2, *gen.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900.0, 400.0])
    cond = gen.encode(PROMPTS[:2], with_negative=True)
    uncond = gen.encode([gen.negative_prompt] * 2)
    with torch.no_grad():
        guided = gen.predict(x, t, cond, guidance_scale=4.0)
        c, u = gen.predict(x, t, cond), gen.predict(x, t, uncond)
    torch.testing.assert_close(guided, u + 4.0 * (c - u), rtol=1e-5, atol=1e-5)
    r = _rollout(gen, guidance=4.0)
    r.advantages, r.mask = torch.ones(len(r)), torch.ones(len(r), dtype=torch.bool)
    algo = build_algorithm("flow_grpo")
    for batch in algo.micro_batches(r, torch.tensor([1, 4, 6])):
        assert batch.guidance_scale == 4.0
        _, m = algo.loss(batch, gen)
        assert m["log_ratio_abs_max"] < 1e-5


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_first_inner_step_ratio_is_one(family):
    if family == "flow":
        gen, algo, kname, noise = tiny_generator("flow"), build_algorithm("flow_grpo", {"kl_beta": 0.04}), "sde", 0.7
    else:
        gen, algo, kname, noise = tiny_generator("diffusion"), build_algorithm("ddpo"), "ddim", 1.0
    perturb(gen)  # a policy that differs from the reference
    r = _rollout(gen, kname, noise)
    r.advantages = torch.linspace(-1, 1, len(r))
    r.mask = torch.ones(len(r), dtype=torch.bool)
    worst = 0.0
    for idx in (torch.tensor([5, 0, 2]), torch.arange(len(r))):  # minibatch geometry differs from the rollout's
        for batch in algo.micro_batches(r, idx):
            _, m = algo.loss(batch, gen)
            worst = max(worst, m["log_ratio_abs_max"])
    assert worst < 1e-5


def test_flow_grpo_loss_by_hand_and_kl_zero_at_reference():
    gen = tiny_generator("flow")
    algo = build_algorithm("flow_grpo", {"kl_beta": 0.5, "clip_range": 1e-3})
    r = _rollout(gen)
    r.advantages = torch.linspace(-2, 2, len(r))
    r.mask = torch.ones(len(r), dtype=torch.bool)
    r.mask[0] = False
    idx = torch.arange(len(r))
    batch = r.step_batch(idx, 0)
    # fresh LoRA (B = 0): the policy is the reference, so the KL term is exactly 0
    loss, m = algo.loss(batch, gen)
    assert m["kl"] == 0.0
    # move the policy, then recompute the loss independently from the network's velocity and the SDE formula
    perturb(gen, 0.02)
    loss, m = algo.loss(batch, gen)
    with torch.no_grad():
        v = gen.predict(batch.x, batch.t_model, batch.cond)
        with gen.reference():
            v_ref = gen.predict(batch.x, batch.t_model, batch.cond)
    s, sn = batch.c.view(-1, 1, 1, 1), batch.c_next.view(-1, 1, 1, 1)
    sigma_max = float(gen.schedule(6).c[1])
    sig_t = 0.7 * torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_max), s)))
    dt = sn - s

    def mean_of(vel):
        return batch.x + (vel + sig_t**2 / (2 * s) * (batch.x + (1 - s) * vel)) * dt

    mu, mu_ref = mean_of(v), mean_of(v_ref)
    std = sig_t * torch.sqrt(-dt)
    logp = Normal(mu, std.expand_as(mu)).log_prob(batch.x_next).mean(dim=(1, 2, 3))
    rho = torch.exp(logp - batch.old_log_prob)
    a = batch.advantages
    pg = torch.maximum(-a * rho, -a * rho.clamp(1 - 1e-3, 1 + 1e-3)) * batch.mask
    kl = ((mu - mu_ref) ** 2).mean(dim=(1, 2, 3)) / (2 * sig_t.flatten() ** 2) * batch.mask
    expected = pg.mean() + 0.5 * kl.mean()
    assert m["kl"] > 0
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in gen.trainable_parameters())


def test_registry_errors_and_extension():
    with pytest.raises(UserError, match="did you mean 'flow_grpo'"):
        build_algorithm("flow_grpoo")
    with pytest.raises(UserError, match="algorithm.options.clip_rang"):
        build_algorithm("flow_grpo", {"clip_rang": 0.1})
    with pytest.raises(ValueError, match="unknown needs"):
        register_algorithm("bad_needs_algo")(type("Bad", (Algorithm,), {"needs": frozenset({"telepathy"})}))


def test_rollout_stores_only_trained_steps_and_can_share_group_noise():
    gen = tiny_generator("flow")
    schedule = gen.schedule(6)
    kernel = gen.make_kernel("sde", 0.7, schedule)
    prompts = [p for p in PROMPTS[:2] for _ in range(3)]
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    r = run_rollout(gen, schedule, kernel, prompts, [{}] * 6, ids, [5, 6, 7, 8, 9, 10],
                    RolloutPlan(num_train_steps=2, train_window=(0, 4), share_initial_noise=True))
    assert r.x.shape[:2] == (6, 2) and r.log_prob.shape == (6, 2)
    assert ((r.step_index >= 0) & (r.step_index < 4)).all()
    # the same seed gives the same choice and the same sample, whatever the batch around it
    alone = run_rollout(gen, schedule, kernel, prompts[3:4], [{}], ids[3:4], [8],
                        RolloutPlan(num_train_steps=2, train_window=(0, 4)))
    assert torch.equal(alone.step_index[0], r.step_index[3])
    torch.testing.assert_close(alone.final_latents[0], r.final_latents[3], rtol=1e-5, atol=1e-5)
    # shared initial noise: group members start from their first member's noise, then diverge (SDE)
    full = run_rollout(gen, schedule, kernel, prompts, [{}] * 6, ids, [5, 6, 7, 8, 9, 10],
                       RolloutPlan(train_window=(0, 1), share_initial_noise=True))
    assert torch.equal(full.x[0, 0], full.x[2, 0]) and not torch.equal(full.x[0, 0], full.x[3, 0])
    assert not torch.equal(full.final_latents[0], full.final_latents[2])
