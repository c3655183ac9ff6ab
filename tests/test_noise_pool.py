"""Block-averaged exploration noise (``sampling.noise_pool``) against independent computations: an explicit
orthonormal basis of block-constant latents, closed-form Gaussian log-densities, and the marginals of a Gaussian
data distribution whose velocity field is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from visalign.errors import UserError
from visalign.sampling import DDIM, FlowCPS, FlowSDE

B, C, H, W, K = 3, 2, 4, 6, 2


def _basis(c: int, h: int, w: int, k: int) -> torch.Tensor:
    """U [D, D / k^2]: one column per (channel, block), 1 / k on the block's k^2 entries (orthonormal)."""
    cols = []
    for ch in range(c):
        for bi in range(h // k):
            for bj in range(w // k):
                u = torch.zeros(c, h, w)
                u[ch, bi * k:(bi + 1) * k, bj * k:(bj + 1) * k] = 1.0 / k
                cols.append(u.flatten())
    return torch.stack(cols, dim=1)


def _data():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g),
            torch.randn(B, C, H, W, generator=g))


def test_basis_is_orthonormal_and_matches_the_kernels_projection():
    u = _basis(C, H, W, K)
    torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1]))
    y = _data()[0]
    k = FlowSDE(noise_level=0.7, noise_pool=K)
    torch.testing.assert_close(k.project(y).flatten(1), y.flatten(1) @ u @ u.T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k.coords(y).flatten(1), y.flatten(1) @ u, rtol=1e-6, atol=1e-6)


def test_pooled_flow_sde_step_and_log_prob_are_the_subspace_gaussian():
    x, v, z = _data()
    u = _basis(C, H, W, K)
    proj = u @ u.T
    a, s, sn, sigma_max = 0.8, 0.6, 0.45, 0.9
    dt = sn - s
    sig_t = a * math.sqrt(s / (1 - s))
    flat = lambda t: t.flatten(1)  # noqa: E731
    corr = flat(x + (1 - s) * v) @ proj  # the score correction, in the noise subspace only
    mu = flat(x) + (flat(v) + sig_t**2 / (2 * s) * corr) * dt
    std = sig_t * math.sqrt(-dt)
    x_next = mu + std * flat(z) @ proj
    coords = (x_next - mu) @ u  # [B, D / k^2]
    expected = Normal(torch.zeros_like(coords), torch.full_like(coords, std)).log_prob(coords).mean(dim=1)
    k = FlowSDE(noise_level=a, sigma_max=sigma_max, noise_pool=K)
    tr = k.step(x, v, torch.full((B,), s), torch.full((B,), sn), z)
    torch.testing.assert_close(flat(tr.x_next), x_next, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat(tr.mean), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr.log_prob, expected, rtol=1e-5, atol=1e-5)
    # the log-prob's gradient in the mean (what the policy gradient follows): P (x' - mu) / (std^2 n_coords)
    mean = tr.mean.clone().requires_grad_(True)
    k.log_prob(tr.x_next, mean, tr.std).sum().backward()
    expected_grad = (x_next - mu) @ proj / (std**2 * u.shape[1])
    torch.testing.assert_close(flat(mean.grad), expected_grad, rtol=1e-4, atol=1e-6)
    # the step moves the latent only inside the subspace away from its mean
    resid = flat(tr.x_next - tr.mean)
    torch.testing.assert_close(resid, resid @ proj, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_pooled_ddim_step_and_log_prob(prediction_type):
    x, out, z = _data()
    u = _basis(C, H, W, K)
    proj = u @ u.T
    eye = torch.eye(proj.shape[0])
    ab, ab_prev, eta = 0.3, 0.5, 1.0
    flat = lambda t: t.flatten(1)  # noqa: E731
    if prediction_type == "epsilon":
        eps = flat(out)
        x0 = (flat(x) - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    else:
        x0 = flat(out)
        eps = (flat(x) - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    std = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    # DDIM's construction with variance std^2 P: deterministic DDIM outside the noise subspace
    direction = eps @ (math.sqrt(1 - ab_prev) * (eye - proj) + math.sqrt(1 - ab_prev - std**2) * proj)
    mu = math.sqrt(ab_prev) * x0 + direction
    x_next = mu + std * flat(z) @ proj
    coords = (x_next - mu) @ u
    expected = Normal(torch.zeros_like(coords), torch.full_like(coords, std)).log_prob(coords).mean(dim=1)
    k = DDIM(noise_level=eta, prediction_type=prediction_type, noise_pool=K)
    tr = k.step(x, out, torch.full((B,), ab), torch.full((B,), ab_prev), z)
    torch.testing.assert_close(flat(tr.x_next), x_next, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr.log_prob, expected, rtol=1e-5, atol=1e-5)
    # eta 0: the deterministic DDIM step, pooled or not
    det = DDIM(noise_level=0.0, prediction_type=prediction_type, noise_pool=K)
    ref = DDIM(noise_level=0.0, prediction_type=prediction_type)
    c, cn = torch.full((B,), ab), torch.full((B,), ab_prev)
    torch.testing.assert_close(det.step(x, out, c, cn, z).x_next, ref.step(x, out, c, cn, z).x_next)


def test_pooled_flow_sde_with_zero_noise_is_the_ode_step():
    x, v, z = _data()
    c, cn = torch.full((B,), 0.7), torch.full((B,), 0.5)
    got = FlowSDE(noise_level=0.0, sigma_max=0.9, noise_pool=K).step(x, v, c, cn, z).x_next
    torch.testing.assert_close(got, x + v * (cn - c).view(B, 1, 1, 1), rtol=0, atol=1e-6)


def test_pooled_flow_sde_keeps_the_marginals_of_gaussian_data():
    """x0 ~ N(m, diag(d)) per coordinate: x_sigma ~ N((1 - sigma) m, (1 - sigma)^2 d + sigma^2) and the exact
    velocity is E[eps - x0 | x_sigma]. Integrating the pooled SDE from sigma = 0.9 (samples drawn from the exact
    marginal) to sigma = 0.3 must land on the exact marginal there; a correction applied to the whole latent while
    the noise only fills the subspace would shrink the variance of the other directions."""
    gen = torch.Generator().manual_seed(0)
    n, shape = 20000, (1, 4, 4)
    m = torch.linspace(-1.0, 1.0, 16).reshape(shape)
    d = torch.linspace(0.05, 0.6, 16).reshape(shape)

    def marginal(sigma):
        return (1 - sigma) * m, (1 - sigma) ** 2 * d + sigma**2

    def velocity(x, sigma):
        mean, var = marginal(sigma)
        e_eps = sigma / var * (x - mean)
        e_x0 = m + (1 - sigma) * d / var * (x - mean)
        return e_eps - e_x0

    sigmas = torch.linspace(0.9, 0.3, 301)
    mean0, var0 = marginal(float(sigmas[0]))
    x = mean0 + var0.sqrt() * torch.randn(n, *shape, generator=gen)
    k = FlowSDE(noise_level=0.9, sigma_max=0.95, noise_pool=2)
    for s, sn in zip(sigmas[:-1], sigmas[1:], strict=True):
        c, cn = s.expand(n), sn.expand(n)
        x = k.step(x, velocity(x, float(s)), c, cn, torch.randn(n, *shape, generator=gen)).x_next
    mean1, var1 = marginal(float(sigmas[-1]))
    torch.testing.assert_close(x.mean(0), mean1, rtol=0, atol=0.03)
    torch.testing.assert_close(x.var(0), var1, rtol=0.05, atol=0)


def test_noise_pool_errors_name_the_key():
    with pytest.raises(UserError, match="noise_pool"):
        FlowCPS(noise_level=0.5, noise_pool=2)
    k = FlowSDE(noise_level=0.7, noise_pool=4)
    x = torch.zeros(1, 4, 6, 6)
    with pytest.raises(UserError, match="noise_pool=4 must divide"):
        k.step(x, x, torch.full((1,), 0.5), torch.full((1,), 0.4), torch.randn_like(x))


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_pooled_rollouts_train_through_the_one_trainer(tmp_path, family):
    """sampling.noise_pool end to end: the config reaches the kernel and the first inner step of every iteration
    replays the pooled rollout exactly."""
    import json

    from engine_fixtures import tiny_trainer

    trainer = tiny_trainer(tmp_path, ["train.iterations=2", "sampling.noise_pool=2"], family)
    assert trainer.rollouts.kernel.noise_pool == 2
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and max(r["first_step_log_ratio"] for r in rows) < 1e-5
