"""Step kernels against independent computations: diffusers' schedulers, closed-form Gaussians, the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch.distributions import Normal

from visalign.sampling import DDIM, FlowCPS, FlowODE, FlowSDE

torch.manual_seed(0)
B, SHAPE = 3, (4, 6, 6)


def _xv():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, *SHAPE, generator=g), torch.randn(B, *SHAPE, generator=g), torch.randn(B, *SHAPE, generator=g)


def _sigmas(steps=8, shift=3.0):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    return sched


def test_flow_ode_matches_diffusers_euler_step():
    x, v, _ = _xv()
    sched = _sigmas()
    for i in range(len(sched.timesteps)):
        sched._step_index = i
        expected = sched.step(v, sched.timesteps[i], x, return_dict=False)[0]
        c, cn = sched.sigmas[i].expand(B), sched.sigmas[i + 1].expand(B)
        got = FlowODE().step(x, v, c, cn, None).x_next
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_flow_ode_on_converted_x0_matches_diffusers_first_order_flow_dpm_solver():
    """An x0-predicting flow model: the Euler step on v = (x - x0) / sigma is DPM-Solver++(1) over flow sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    x, x0, _ = _xv()
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="sample", solver_order=1,
                                        algorithm_type="dpmsolver++", final_sigmas_type="zero", flow_shift=3.0)
    sched.set_timesteps(8)
    for i, t in enumerate(sched.timesteps):
        expected = sched.step(x0, t, x, return_dict=False)[0]
        c, cn = sched.sigmas[i].expand(B), sched.sigmas[i + 1].expand(B)
        v = (x - x0) / c.view(B, 1, 1, 1)
        got = FlowODE().step(x, v, c, cn, None).x_next
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("kernel_cls", [FlowSDE, FlowCPS])
def test_zero_noise_level_is_the_ode_step(kernel_cls):
    x, v, z = _xv()
    sched = _sigmas()
    sig = sched.sigmas
    for i in range(len(sig) - 1):
        c, cn = sig[i].expand(B), sig[i + 1].expand(B)
        ode = x + v * (cn - c).view(B, 1, 1, 1)
        got = kernel_cls(noise_level=0.0, sigma_max=float(sig[1])).step(x, v, c, cn, z).x_next
        torch.testing.assert_close(got, ode, rtol=0, atol=2e-6)


def test_ddim_zero_eta_is_deterministic_ddim():
    x, eps, z = _xv()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                          clip_sample=False, steps_offset=1)
    sched.set_timesteps(10)
    for t in sched.timesteps[:-1]:
        ab = sched.alphas_cumprod[t].expand(B)
        ab_prev = sched.alphas_cumprod[t - 100].expand(B)
        expected = sched.step(eps, t, x, eta=0.0).prev_sample
        got = DDIM(noise_level=0.0).step(x, eps, ab, ab_prev, z).x_next
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flow_sde_log_prob_is_the_closed_form_gaussian():
    x, v, z = _xv()
    a = 0.7
    sched = _sigmas()
    sig = sched.sigmas
    sigma_max = float(sig[1])
    for i in range(len(sig) - 2):  # the last step (sigma' = 0) is deterministic
        s, sn = float(sig[i]), float(sig[i + 1])
        dt = sn - s
        # the formula, written out independently
        denom = 1 - (sigma_max if s == 1.0 else s)
        sig_t = a * math.sqrt(s / denom)
        mu = x + (v + sig_t**2 / (2 * s) * (x + (1 - s) * v)) * dt
        std = sig_t * math.sqrt(-dt)
        x_next = mu + std * z
        expected = Normal(mu, torch.full_like(mu, std)).log_prob(x_next).mean(dim=(1, 2, 3))
        tr = FlowSDE(noise_level=a, sigma_max=sigma_max).step(x, v, torch.full((B,), s), torch.full((B,), sn), z)
        torch.testing.assert_close(tr.x_next, x_next, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tr.log_prob, expected, rtol=1e-5, atol=1e-5)
        assert tr.log_prob.dtype == torch.float32 and tr.log_prob.shape == (B,)


def test_flow_sde_first_step_just_under_one_is_capped_like_sigma_one():
    # A scheduler that rounds its timesteps (DPMSolverMultistepScheduler in x0 flow folders) starts at sigma 0.999,
    # not 1. The denominator's sigma is capped at the schedule's second sigma either way: sigma_t by hand, and the
    # step keeps the marginal near the exact one. Data at 0 (x0 = 0, v = x / sigma): x_sigma ~ N(0, sigma^2).
    a, s1 = 0.7, 0.899
    k = FlowSDE(noise_level=a, sigma_max=s1)
    for s0 in (1.0, 0.999):
        assert math.isclose(float(k.sigma_t(torch.tensor([s0]))), a * math.sqrt(s0 / (1 - s1)), rel_tol=1e-6)
    g = torch.Generator().manual_seed(0)
    n = 4000
    z0, z = torch.randn(n, 4, 4, 4, generator=g), torch.randn(n, 4, 4, 4, generator=g)
    x = 0.999 * z0
    x_next = k.step(x, x / 0.999, torch.full((n,), 0.999), torch.full((n,), s1), z).x_next
    assert abs(float(x_next.std()) - s1) < 0.1 * s1  # uncapped (sigma_t = 22 a) the std is about 2.1


def test_flow_sde_last_step_is_deterministic_and_not_trainable():
    x, v, z = _xv()
    k = FlowSDE(noise_level=0.9, sigma_max=0.95)
    c, cn = torch.full((B,), 0.1), torch.zeros(B)
    tr = k.step(x, v, c, cn, z)
    torch.testing.assert_close(tr.x_next, x - 0.1 * v)
    assert not k.trainable(c, cn).any()
    assert k.trainable(torch.full((B,), 0.5), torch.full((B,), 0.3)).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_eta_matches_diffusers_and_closed_form_log_prob(prediction_type):
    x, out, z = _xv()
    eta = 1.0
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                          clip_sample=False, steps_offset=1, prediction_type=prediction_type)
    sched.set_timesteps(10)
    k = DDIM(noise_level=eta, prediction_type=prediction_type)
    for t in sched.timesteps:
        prev = t - 100
        ab = sched.alphas_cumprod[t].expand(B)
        ab_prev = (sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod).expand(B)
        expected = sched.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        tr = k.step(x, out, ab, ab_prev, z)
        torch.testing.assert_close(tr.x_next, expected, rtol=1e-5, atol=1e-5)
        # closed form: DDPM posterior variance times eta^2 (diffusers' _get_variance)
        var = (1 - ab_prev[0]) / (1 - ab[0]) * (1 - ab[0] / ab_prev[0])
        std = eta * var.sqrt()
        torch.testing.assert_close(tr.std, std.expand(B), rtol=1e-6, atol=1e-7)
        lp = Normal(tr.mean, std.expand_as(tr.mean)).log_prob(tr.x_next).mean(dim=(1, 2, 3))
        torch.testing.assert_close(tr.log_prob, lp, rtol=1e-5, atol=1e-5)


def test_cps_mean_std_and_log_prob():
    x, v, z = _xv()
    a, s, sn = 0.6, 0.7, 0.5
    k = FlowCPS(noise_level=a)
    tr = k.step(x, v, torch.full((B,), s), torch.full((B,), sn), z)
    s_t = sn * math.sin(a * math.pi / 2)
    x0, x1 = x - s * v, x + (1 - s) * v
    mu = (1 - sn) * x0 + math.sqrt(sn**2 - s_t**2) * x1
    torch.testing.assert_close(tr.x_next, mu + s_t * z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr.log_prob, -((tr.x_next - mu) ** 2).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    # CPS keeps the coefficients: x' = (1 - sigma') x0_hat + sigma' * (unit-variance mix of x1_hat and noise)
    assert math.isclose((sn**2 - s_t**2) + s_t**2, sn**2)


def test_replayed_log_prob_equals_the_stored_one():
    x, v, z = _xv()
    k = FlowSDE(noise_level=0.7, sigma_max=0.9)
    c, cn = torch.full((B,), 0.6), torch.full((B,), 0.45)
    tr = k.step(x, v, c, cn, z)
    mean, std = k.mean_std(x, v.clone(), c, cn)
    assert torch.equal(k.log_prob(tr.x_next, mean, std), tr.log_prob)
