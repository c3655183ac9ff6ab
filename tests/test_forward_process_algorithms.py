"""Forward-process algorithms on final samples (DiffusionNFT, AWM, RWR, RAFT): the shared noising against an
independent re-derivation, each loss against hand computations with a stub network, and short runs of the
training loop on tiny flow / diffusion models."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine_fixtures import Brightness, linear_decode
from visalign.algorithms import build_algorithm
from visalign.algorithms._forward_process import forward_noise, forward_seed
from visalign.algorithms.base import RunContext
from visalign.algorithms.diffusion_nft import nft_loss
from visalign.algorithms.raft import top_k_per_group
from visalign.algorithms.rwr import rwr_weights
from visalign.config import load_train_config
from visalign.models.base import Cond, Schedule
from visalign.models.diffusion import DiffusionGenerator
from visalign.models.flow import FlowGenerator
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.rollout import SampleBatch
from visalign.trainer import Trainer

torch.set_num_threads(1)
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHAPE = (2, 3, 3)


# ---- a stub generator whose prediction is known: a constant field w (trainable) ------------------------------


class StubGenerator:
    """predict() returns w everywhere (w_ref inside reference()); the scheduler has T = 1000 and a known abar."""

    def __init__(self, family: str = "flow", w: float = 0.3, w_ref: float = -0.2,
                 prediction_type: str = "epsilon") -> None:
        self.family = family
        self.prediction_type = prediction_type
        self.w = nn.Parameter(torch.tensor(w))
        self.w_ref = w_ref
        self._ref = False
        abar = torch.linspace(0.999, 0.01, 1000)
        self.pipeline = SimpleNamespace(scheduler=SimpleNamespace(
            config=SimpleNamespace(num_train_timesteps=1000), alphas_cumprod=abar))
        self.guidance: list[float] = []

    def predict(self, x, t_model, cond, guidance_scale=1.0):
        self.guidance.append(guidance_scale)
        w = self.w_ref if self._ref else self.w
        return w * torch.ones_like(x, dtype=torch.float32)

    @contextlib.contextmanager
    def reference(self):
        self._ref = True
        try:
            yield
        finally:
            self._ref = False

    def named_trainable(self):
        return [("w", self.w)]

    # the forward process is the real adapter's (the stub only replaces the network and the scheduler)
    predicts_sample = False

    def _family_math(self, name):
        return getattr(FlowGenerator if self.family == "flow" else DiffusionGenerator, name)

    def noise_level_at(self, tau):
        return self._family_math("noise_level_at")(self, tau)

    def add_noise(self, x0, noise, c):
        return self._family_math("add_noise")(self, x0, noise, c)

    def regression_target(self, x0, noise, c):
        return self._family_math("regression_target")(self, x0, noise, c)

    def trainable_parameters(self):
        return [self.w]


def _batch(n: int = 4, advantages=None, mask=None, rewards=None, groups=None, seed: int = 0) -> SampleBatch:
    g = torch.Generator().manual_seed(seed)
    return SampleBatch(
        final_latents=torch.randn(n, *SHAPE, generator=g),
        images=torch.zeros(n, 3, 4, 4),
        prompts=["p"] * n,
        metadata=[{}] * n,
        group_ids=torch.as_tensor(groups if groups is not None else [0] * n),
        advantages=torch.as_tensor(advantages if advantages is not None else [0.0] * n, dtype=torch.float32),
        mask=torch.as_tensor(mask if mask is not None else [True] * n),
        rewards=rewards or {"r": torch.zeros(n)},
        cond=Cond({"embeds": torch.zeros(n, 1)}),
        guidance_scale=1.0,
        seeds=torch.arange(100, 100 + n, dtype=torch.int64),
    )


def _draws(seeds, x0, family="flow", abar=None):
    """Independent re-derivation of the forward process (uniform time on [0, 1]): per sample, seed a generator,
    draw u then eps."""
    xs, targets, levels, ts = [], [], [], []
    for s, x in zip(seeds.tolist(), x0, strict=True):
        g = torch.Generator().manual_seed(int(s))
        u = float(torch.rand((), generator=g))
        eps = torch.randn(x.shape, generator=g)
        if family == "flow":
            xs.append((1 - u) * x + u * eps)
            targets.append(eps - x)
            levels.append(u)
            ts.append(u * 1000)
        else:
            t = min(math.floor(u * 1000), 999)
            a = float(abar[t])
            xs.append(math.sqrt(a) * x + math.sqrt(1 - a) * eps)
            targets.append(eps)
            levels.append(a)
            ts.append(float(t))
    return torch.stack(xs), torch.stack(targets), torch.tensor(levels), torch.tensor(ts)


# ---- the shared forward process -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_forward_noise_matches_an_independent_derivation_and_is_batch_independent(family):
    gen = StubGenerator(family)
    batch = _batch(5)
    out = forward_noise(batch.final_latents, batch.seeds, gen)
    x_t, target, level, t = _draws(batch.seeds, batch.final_latents, family, gen.pipeline.scheduler.alphas_cumprod)
    torch.testing.assert_close(out.x_t, x_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.target, target, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.level, level.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.t_model, t.float(), rtol=1e-6, atol=1e-4)
    # the same seeds give the same draws, however the samples are split
    again = forward_noise(batch.final_latents, batch.seeds, gen)
    assert torch.equal(again.x_t, out.x_t) and torch.equal(again.t_model, out.t_model)
    head = forward_noise(batch.final_latents[:2], batch.seeds[:2], gen)
    tail = forward_noise(batch.final_latents[2:], batch.seeds[2:], gen)
    assert torch.equal(torch.cat([head.x_t, tail.x_t]), out.x_t)


def test_forward_noise_v_prediction_and_schedule_times():
    gen = StubGenerator("diffusion", prediction_type="v_prediction")
    batch = _batch(3)
    out = forward_noise(batch.final_latents, batch.seeds, gen)
    _x, eps, abar, _t = _draws(batch.seeds, batch.final_latents, "diffusion", gen.pipeline.scheduler.alphas_cumprod)
    a = abar.view(-1, 1, 1, 1).float()
    torch.testing.assert_close(out.target, a.sqrt() * eps - (1 - a).sqrt() * batch.final_latents, rtol=1e-5,
                               atol=1e-6)
    # schedule: one of the rollout schedule's (t_model, sigma) pairs, picked by the sample's first draw
    sched = Schedule(t_model=torch.tensor([1000.0, 500.0, 100.0]), c=torch.tensor([1.0, 0.5, 0.1]),
                     c_next=torch.tensor([0.5, 0.1, 0.0]))
    flow = StubGenerator("flow")
    out = forward_noise(batch.final_latents, batch.seeds, flow, "schedule", schedule=sched)
    for i, s in enumerate(batch.seeds.tolist()):
        j = int(torch.randint(3, (), generator=torch.Generator().manual_seed(s)))
        assert float(out.t_model[i]) == float(sched.t_model[j]) and float(out.level[i]) == float(sched.c[j])


class FakeRollout:
    """What the algorithms read from a rollout: advantages, group ids, and sample_batch(indices)."""

    def __init__(self, batch: SampleBatch) -> None:
        self.batch = batch
        self.advantages, self.group_ids = batch.advantages, batch.group_ids

    def sample_batch(self, indices):
        b = self.batch
        i = indices
        return SampleBatch(b.final_latents[i], b.images[i], [b.prompts[j] for j in i.tolist()],
                           [b.metadata[j] for j in i.tolist()], b.group_ids[i], b.advantages[i], b.mask[i],
                           {k: v[i] for k, v in b.rewards.items()}, b.cond.select(i), b.guidance_scale, b.seeds[i])


def test_micro_batch_seeds_are_fresh_per_epoch_and_draw_and_restart_each_iteration():
    algo = build_algorithm("rwr", {"draws_per_sample": 2})
    rollout = FakeRollout(_batch(4))
    idx = torch.tensor([2, 0])
    algo.on_iteration_start(1)
    first = [mb.seeds.tolist() for mb in algo.micro_batches(rollout, idx)]
    second = [mb.seeds.tolist() for mb in algo.micro_batches(rollout, idx)]  # the next inner epoch
    s2, s0 = 102, 100
    assert first == [[forward_seed(s2, 0, 0), forward_seed(s0, 0, 0)], [forward_seed(s2, 0, 1), forward_seed(s0, 0, 1)]]
    assert second == [[forward_seed(s2, 1, 0), forward_seed(s0, 1, 0)], [forward_seed(s2, 1, 1), forward_seed(s0, 1, 1)]]
    assert len({s for row in first + second for s in row}) == 8
    algo.on_iteration_start(2)
    assert [mb.seeds.tolist() for mb in algo.micro_batches(rollout, idx)] == first


# ---- DiffusionNFT -------------------------------------------------------------------------------------------


def test_nft_loss_by_hand_at_r_one_zero_half_and_clipped():
    # one data row per sample: v_theta = (1, 2), v_old = (0, 0), v = (1, 1), b = 1/2
    # v+ = (0.5, 1): mean (v+ - v)^2 = (0.25 + 0) / 2 = 0.125 ; v- = (-0.5, -1): ((-1.5)^2 + (-2)^2) / 2 = 3.125
    v_theta = torch.tensor([[1.0, 2.0]]).repeat(4, 1)
    v_old = torch.zeros(4, 2)
    target = torch.ones(4, 2)
    adv = torch.tensor([5.0, -5.0, 0.0, 12.0])  # A = A_max, -A_max, 0, beyond A_max
    loss, r = nft_loss(v_theta, v_old, target, adv, beta=0.5, adv_max=5.0)
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(loss, torch.tensor([0.125, 3.125, 0.5 * 0.125 + 0.5 * 3.125, 0.125]))


def test_nft_gradient_at_the_old_policy_is_advantage_weighted_flow_matching():
    # with v_old = v_theta, dL/dv_theta = 2 b (2 r - 1) (v_theta - v) / D: zero at r = 1/2, sign follows A
    v = torch.tensor([[0.3, -1.0, 2.0]]).repeat(3, 1)
    target = torch.tensor([[1.0, 0.0, 1.0]]).repeat(3, 1)
    theta = v.clone().requires_grad_(True)
    adv = torch.tensor([2.0, 0.0, -1.0])
    b, a_max = 0.7, 4.0
    loss, r = nft_loss(theta, v, target, adv, beta=b, adv_max=a_max)
    loss.sum().backward()
    expected = 2 * b * (2 * r.view(-1, 1) - 1) * (v - target) / 3
    torch.testing.assert_close(theta.grad, expected, rtol=1e-6, atol=1e-7)
    assert theta.grad[1].abs().max() == 0


def _nft(**options):
    opts = {"time_sampling": "uniform", "kl_beta": 0.0, **options}
    return build_algorithm("diffusion_nft", opts)


def test_nft_velocity_loss_through_the_algorithm_uses_the_old_weights_without_cfg():
    gen = StubGenerator("flow", w=0.3)
    nft = _nft(beta=0.5, loss_form="velocity")
    batch = _batch(4, advantages=[5.0, -5.0, 0.0, 1.0], mask=[True, True, True, False])
    nft.on_iteration_start(1)
    nft.loss(batch, gen)  # the old policy starts as the policy (w_old = 0.3)
    with torch.no_grad():
        gen.w.fill_(0.9)  # "training" moved the policy; the old policy follows at the next iteration only
    loss, metrics = nft.loss(batch, gen)
    _x, target, _lvl, _t = _draws(batch.seeds, batch.final_latents)
    pos = ((0.5 * 0.3 + 0.5 * 0.9 - target) ** 2).mean(dim=(1, 2, 3))
    neg = ((1.5 * 0.3 - 0.5 * 0.9 - target) ** 2).mean(dim=(1, 2, 3))
    r = torch.tensor([1.0, 0.0, 0.5, 0.6])
    per = r * pos + (1 - r) * neg
    expected = (per * torch.tensor([1.0, 1.0, 1.0, 0.0])).sum() / 4  # masked sample counts in the denominator
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert metrics["nft/old_deviation"] == pytest.approx(0.36, rel=1e-5)  # (0.9 - 0.3)^2
    assert float(gen.w.detach()) == pytest.approx(0.9) and set(gen.guidance) == {1.0}  # weights restored, CFG-free
    # the kl term against the reference: kl_beta * mean (w - w_ref)^2 over trained samples
    nft_kl = _nft(beta=0.5, kl_beta=0.1, loss_form="velocity")
    nft_kl.on_iteration_start(1)
    loss_kl, m = nft_kl.loss(batch, gen)
    assert m["kl"] == pytest.approx(3 / 4 * (0.9 + 0.2) ** 2, rel=1e-5)


def test_nft_old_policy_decay_counts_optimizer_steps_and_state_dict_round_trips():
    gen = StubGenerator("flow", w=1.0)
    nft = _nft(ema_rate=0.1, ema_max=0.25)
    batch = _batch(2, advantages=[1.0, -1.0])
    old, steps = 1.0, 0
    # optimizer steps per iteration: the reference's decay d = min(0.1 * steps so far, 0.25) counts them
    for it, w, n_steps in zip(range(1, 6), [1.0, 3.0, 2.0, 5.0, -1.0], [2, 1, 1, 1, 1], strict=True):
        with torch.no_grad():
            gen.w.fill_(w)
        nft.on_iteration_start(it)
        _, m = nft.loss(batch, gen)
        d = min(0.1 * steps, 0.25)  # steps 0, 2, 3, 4, 5: d = 0, 0.2, 0.25 (capped), 0.25, 0.25
        old = d * old + (1 - d) * w
        assert m["nft/old_decay"] == pytest.approx(d)
        assert m["nft/old_deviation"] == pytest.approx((w - old) ** 2, rel=1e-5, abs=1e-9)
        nft.loss(batch, gen)  # a second minibatch of the same iteration: no further update
        assert float(nft.old.shadow["w"]) == pytest.approx(old, rel=1e-6)
        for _ in range(n_steps):
            nft.on_optimizer_step()
        steps += n_steps
    # a resumed algorithm (fresh object, state loaded before it meets the generator) continues identically
    state = nft.state_dict()
    twin = _nft(ema_rate=0.1, ema_max=0.25)
    twin.load_state_dict(state)
    assert twin.state_dict()["updated_for"] == 5  # a checkpoint taken before the first loss keeps the state
    assert twin.state_dict()["optimizer_steps"] == 6
    with torch.no_grad():
        gen.w.fill_(4.0)
    nft.on_iteration_start(6)
    twin.on_iteration_start(6)
    a, ma = nft.loss(batch, gen)
    b, mb = twin.loss(batch, gen)
    assert torch.equal(a, b) and ma == mb
    assert torch.equal(nft.old.shadow["w"], twin.old.shadow["w"])
    assert float(twin.old.shadow["w"]) == pytest.approx(0.25 * old + 0.75 * 4.0, rel=1e-6)


def test_nft_reference_loss_by_hand():
    # one sample, two data values: x_t = (1, 0), sigma = 1/2, x_0 = (0, 2); v_theta = (2, 0), v_old = (0, 4), b = 1/2
    # v+ = (1, 2): x0+ = x_t - v+/2 = (0.5, -1), error (0.5, -3): mean sq 4.625, mean abs 1.75 -> 2.642857
    # v- = (-1, 6): x0- = (1.5, -3), error (1.5, -5): mean sq 13.625, mean abs 3.25 -> 4.192308
    # A = 2.5, A_max = 5: r = 3/4; L = (5 / 0.5) (3/4 * 2.642857 + 1/4 * 4.192308) = 30.302198
    from visalign.algorithms.diffusion_nft import nft_reference_loss

    v_theta = torch.tensor([[2.0, 0.0]], requires_grad=True)
    loss, r = nft_reference_loss(v_theta, torch.tensor([[0.0, 4.0]]), torch.tensor([[1.0, 0.0]]),
                                 torch.tensor([0.5]), torch.tensor([[0.0, 2.0]]), torch.tensor([2.5]), 0.5, 5.0)
    pos, neg = 4.625 / 1.75, 13.625 / 3.25
    torch.testing.assert_close(r, torch.tensor([0.75]))
    torch.testing.assert_close(loss, torch.tensor([10 * (0.75 * pos + 0.25 * neg)]))
    # the divisors carry no gradient: dL/dv_theta = 10 [r * 2 e+ * (-s b) / (D w+) + (1 - r) 2 e- (s b) / (D w-)]
    loss.sum().backward()
    e_pos, e_neg = torch.tensor([0.5, -3.0]), torch.tensor([1.5, -5.0])
    grad = 10 * (0.75 * 2 * e_pos * (-0.25) / (2 * 1.75) + 0.25 * 2 * e_neg * 0.25 / (2 * 3.25))
    torch.testing.assert_close(v_theta.grad, grad.view(1, 2))
    # a perfect prediction: the floor 1e-5 keeps the divisor finite
    exact, _ = nft_reference_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.5]),
                                  torch.ones(1, 2), torch.tensor([0.0]), 1.0, 5.0)
    assert float(exact) == 0.0


def test_nft_reference_loss_through_the_algorithm_and_its_velocity_kl():
    gen = StubGenerator("flow", w=0.3)
    nft = _nft(beta=0.5, kl_beta=0.1)
    batch = _batch(4, advantages=[5.0, -5.0, 0.0, 1.0], mask=[True, True, True, False])
    nft.on_iteration_start(1)
    nft.loss(batch, gen)  # the old policy starts as the policy (w_old = 0.3)
    with torch.no_grad():
        gen.w.fill_(0.9)
    loss, metrics = nft.loss(batch, gen)
    x_t, target, sigma, _t = _draws(batch.seeds, batch.final_latents)
    s = sigma.view(-1, 1, 1, 1)
    x0 = batch.final_latents
    per = []
    for v in (0.5 * 0.3 + 0.5 * 0.9, 1.5 * 0.3 - 0.5 * 0.9):
        err = x_t - s * v - x0
        per.append((err**2).mean(dim=(1, 2, 3)) / err.abs().mean(dim=(1, 2, 3)))
    r = torch.tensor([1.0, 0.0, 0.5, 0.6])
    policy = (10.0 * (r * per[0] + (1 - r) * per[1]) * torch.tensor([1.0, 1.0, 1.0, 0.0])).sum() / 4
    kl = 3 / 4 * (0.9 + 0.2) ** 2  # (w - w_ref)^2, in velocity space (no output-space weight)
    assert metrics["kl"] == pytest.approx(kl, rel=1e-5)
    torch.testing.assert_close(loss, policy + 0.1 * torch.tensor(kl), rtol=1e-5, atol=1e-6)


def test_nft_rollouts_are_drawn_with_the_old_policy():
    gen = StubGenerator("flow", w=0.3)
    nft = _nft()
    nft.on_iteration_start(1)
    with nft.rollout_weights(gen):
        assert float(gen.w) == pytest.approx(0.3)  # iteration 1: the old policy is the policy
    with torch.no_grad():
        gen.w.fill_(0.9)
    nft.on_optimizer_step()
    nft.on_iteration_start(2)
    with nft.rollout_weights(gen):  # d = min(1e-3 * 1, 0.5): old = 0.001 * 0.3 + 0.999 * 0.9
        assert float(gen.w) == pytest.approx(0.001 * 0.3 + 0.999 * 0.9, rel=1e-6)
    assert float(gen.w) == pytest.approx(0.9)  # the policy's weights are back
    current = _nft(rollout_policy="current")
    current.on_iteration_start(1)
    with current.rollout_weights(gen):
        assert float(gen.w) == pytest.approx(0.9)


# ---- AWM ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["uniform", "t", "t2"])
def test_awm_with_beta_zero_is_advantage_weighted_flow_matching(weighting):
    gen = StubGenerator("flow", w=0.4)
    algo = build_algorithm("awm", {"weighting": weighting})
    adv = torch.tensor([1.5, -0.5, 0.0, 2.0])
    batch = _batch(4, advantages=adv, mask=[True, True, True, False])
    loss, _ = algo.loss(batch, gen)
    _x, target, sigma, _t = _draws(batch.seeds, batch.final_latents)
    fm = ((0.4 - target) ** 2).mean(dim=(1, 2, 3))
    w = {"uniform": torch.ones(4), "t": sigma, "t2": sigma**2}[weighting]
    expected = (adv * w * fm * torch.tensor([1.0, 1.0, 1.0, 0.0])).sum() / 4
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    # the gradient: dL/dw = mean_i A_i w_i 2 (w - mean_d target_i)
    loss.backward()
    grad = (adv * w * 2 * (0.4 - target.mean(dim=(1, 2, 3))) * torch.tensor([1.0, 1.0, 1.0, 0.0])).sum() / 4
    assert float(gen.w.grad) == pytest.approx(float(grad), rel=1e-4)


def test_awm_reference_term():
    gen = StubGenerator("flow", w=0.4, w_ref=0.1)
    batch = _batch(3, advantages=[0.0, 0.0, 0.0])
    loss, metrics = build_algorithm("awm", {"kl_beta": 2.0}).loss(batch, gen)
    assert float(loss.detach()) == pytest.approx(2.0 * 0.3**2, rel=1e-5) and metrics["kl"] == pytest.approx(0.09, rel=1e-5)


# ---- RWR and RAFT -------------------------------------------------------------------------------------------


def test_rwr_weights_by_hand():
    signal = torch.tensor([0.0, math.log(2.0), math.log(4.0), 9.0])
    w = rwr_weights(signal, torch.tensor([True, True, True, False]), temperature=1.0)
    torch.testing.assert_close(w, torch.tensor([1 / 7, 2 / 7, 4 / 7, 0.0]))
    w = rwr_weights(signal[:2], torch.tensor([True, True]), temperature=0.5)  # exp(2 R): 1, 4
    torch.testing.assert_close(w, torch.tensor([0.2, 0.8]))
    assert rwr_weights(signal, torch.zeros(4, dtype=torch.bool), 1.0).abs().sum() == 0


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_rwr_loss_is_the_reward_weighted_regression(family):
    gen = StubGenerator(family, w=0.2)
    rewards = {"a": torch.tensor([0.0, 1.0, 2.0]), "b": torch.tensor([1.0, 0.0, 0.0]), "a/sub": torch.zeros(3)}
    batch = _batch(3, rewards=rewards)
    algo = build_algorithm("rwr", {"temperature": 2.0})
    ra, rb = SimpleNamespace(name="a"), SimpleNamespace(name="b")
    algo.bind(RunContext(rewards=[(ra, 1.0), (rb, 0.5)]))
    loss, metrics = algo.loss(batch, gen)
    _x, target, _l, _t = _draws(batch.seeds, batch.final_latents, family, gen.pipeline.scheduler.alphas_cumprod)
    per = ((0.2 - target) ** 2).mean(dim=(1, 2, 3))
    r = torch.tensor([0.5, 1.0, 2.0])  # a + 0.5 b
    w = torch.exp(r / 2) / torch.exp(r / 2).sum()
    torch.testing.assert_close(loss, (w * per).sum(), rtol=1e-5, atol=1e-6)
    assert metrics["rwr/ess"] == pytest.approx(float(1 / (w**2).sum()), rel=1e-5)
    # weighting by the advantage instead
    adv = torch.tensor([1.0, -1.0, 0.0])
    batch = _batch(3, advantages=adv)
    loss, _ = build_algorithm("rwr", {"weight_by": "advantage"}).loss(batch, gen)
    w = torch.exp(adv) / torch.exp(adv).sum()
    torch.testing.assert_close(loss, (w * per).sum(), rtol=1e-5, atol=1e-6)


def test_raft_top_k_per_group():
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    scores = torch.tensor([0.1, 0.5, 0.3, -1.0, 2.0, 2.0, 0.0, -3.0])
    assert top_k_per_group(scores, groups, 1).tolist() == [False, True, False, False, True, False, True, False]
    assert top_k_per_group(scores, groups, 2).tolist() == [False, True, True, False, True, True, True, True]
    assert top_k_per_group(scores, groups, 5).all()


def test_raft_ranks_whole_groups_and_trains_on_the_kept_samples_only():
    gen = StubGenerator("diffusion", w=-0.1)
    adv = [0.2, 1.0, -1.2, 0.5, -0.5, 0.0]
    full = _batch(6, advantages=adv, groups=[0, 0, 0, 1, 1, 1], mask=[True] * 6)
    rollout = FakeRollout(full)
    algo = build_algorithm("raft", {"top_k": 1})
    algo.on_iteration_start(1)
    # a minibatch holding parts of both groups: ranks come from the whole groups
    (mb,) = list(algo.micro_batches(rollout, torch.tensor([0, 1, 3, 5])))
    assert mb.mask.tolist() == [False, True, True, False]
    loss, metrics = algo.loss(mb, gen)
    _x, target, _l, _t = _draws(mb.seeds, mb.final_latents, "diffusion", gen.pipeline.scheduler.alphas_cumprod)
    per = ((-0.1 - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, (per[1] + per[2]) / 4, rtol=1e-5, atol=1e-6)
    assert metrics["raft/kept_frac"] == 0.5


# ---- recipes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["diffusion_nft", "awm", "rwr", "raft"])
def test_recipe_validates_and_builds(name):
    cfg = load_train_config(RECIPES / f"{name}_shapes.yaml", [])
    assert cfg.algorithm.name == name and cfg.model.name in ("shapes-flow", "shapes-diffusion")
    algo = build_algorithm(cfg.algorithm.name, cfg.algorithm.options)
    assert algo.needs == frozenset({"final"})
    family = "flow" if cfg.model.name == "shapes-flow" else "diffusion"
    assert algo.supports_family(family)


# ---- the training loop --------------------------------------------------------------------------------------


def _trainer(tmp_path, algorithm, family, overrides=(), name="run"):
    base = [f"run_dir={tmp_path / name}", "eval.enabled=false", "log.progress=false", "data.prompts_per_iter=2",
            "data.group_size=4", "sampling.num_steps=3", "checkpoint.every=0", f"algorithm.name={algorithm}",
            "train.lr=1e-2", "train.iterations=2"]
    if family == "flow":
        base += ["model.max_sequence_length=0", "sampling.kernel=ode"]
        pipe = build_flow_pipeline(seed=0)
    else:
        base += ["sampling.kernel=ddim", "sampling.noise_level=0.0"]
        pipe = build_diffusion_pipeline(seed=0)
    tr = Trainer(load_train_config(None, base + list(overrides)), pipeline=(family, pipe),
                 rewards=[(Brightness(), 1.0)])
    tr.generator.decode = linear_decode
    return tr


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm, family, options", [
    ("diffusion_nft", "flow", ["train.minibatch_size=4"]),
    ("awm", "flow", ["algorithm.options.kl_beta=0.01"]),
    ("rwr", "flow", ["algorithm.options.temperature=0.05"]),
    ("raft", "flow", ["algorithm.options.top_k=2", "train.minibatch_size=4"]),
    ("rwr", "diffusion", ["algorithm.options.draws_per_sample=2"]),
    ("raft", "diffusion", []),
])
def test_two_iterations_through_the_trainer(tmp_path, algorithm, family, options):
    tr = _trainer(tmp_path, algorithm, family, options)
    before = tr.generator.trainable_state_dict()
    tr.run()
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and all(r["updates"] >= 1 for r in rows)
    for r in rows:
        assert "loss" in r
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
    after = tr.generator.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_diffusion_nft_resume_reproduces_an_uninterrupted_run(tmp_path):
    common = ["train.iterations=3", "train.minibatch_size=4", "train.inner_epochs=2",
              "algorithm.options.ema_rate=0.2", "algorithm.options.kl_beta=0.01"]
    straight = _trainer(tmp_path, "diffusion_nft", "flow", common, name="straight")
    straight.run()
    _trainer(tmp_path, "diffusion_nft", "flow", [*common, "stop_after=2"], name="split").run()
    second = _trainer(tmp_path, "diffusion_nft", "flow", [*common, "resume=auto"], name="split")
    second.run()
    a, b = straight.generator.trainable_state_dict(), second.generator.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = straight.algorithm.state_dict()["old"], second.algorithm.state_dict()["old"]
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    strip = [{k: v for k, v in r.items() if not k.startswith(("time/", "images_per_s"))}
             for r in _rows(tmp_path / "straight")]
    assert strip == [{k: v for k, v in r.items() if not k.startswith(("time/", "images_per_s"))}
                     for r in _rows(tmp_path / "split")]
