"""Reward back-propagation (ReFL, DRaFT-K / DRaFT-LV, AlignProp) against closed forms on a stub generator whose
every sampling step has its own scalar parameter; checkpointing, seeding, errors; the training loop end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine_fixtures import Brightness, linear_decode
from visalign.algorithms import build_algorithm
from visalign.algorithms.base import RunContext
from visalign.config import load_train_config
from visalign.errors import UserError
from visalign.models import FinetuneSpec, build_generator
from visalign.models.base import Cond, Schedule
from visalign.pretrain.build import build_flow_pipeline
from visalign.rewards.base import Reward
from visalign.rollout import RolloutPlan, SampleBatch, run_rollout
from visalign.sampling import DDIM, FlowODE
from visalign.sampling.samplers import DifferentiableSampler
from visalign.trainer import Trainer

torch.set_num_threads(1)
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SEEDS = torch.tensor([11, 22, 33])
SHAPE = (3, 2, 2)


class Verdict(Reward):
    """A non-differentiable reward (a thresholded brightness)."""

    name = "verdict"

    def score(self, images, prompts, metadata):
        return {"verdict": (images.mean(dim=(1, 2, 3)) > 0.5).float()}


class Stub:
    """v (flow) or eps (diffusion) = a_i x at step i: step i multiplies the latents by m_i(a_i), a closed form."""

    def __init__(self, family: str, steps: int) -> None:
        self.family = family
        self.a = torch.nn.Parameter(torch.linspace(0.3, -0.2, steps))

    def init_noise(self, gens):
        return torch.stack([torch.randn(SHAPE, generator=g) for g in gens])

    def predict(self, x, t_model, cond, guidance_scale=1.0):
        return self.a[t_model.long()].view(-1, 1, 1, 1) * x

    def decode(self, latents):
        return latents  # images = latents: the reward is the latents' mean

    # the family's forward process, by hand (flow: x - sigma v; diffusion: DDIM's x0 from eps)
    def x0_from_output(self, x, out, c):
        c = c.float().view(-1, 1, 1, 1)
        if self.family == "flow":
            return x.float() - c * out.float()
        return (x.float() - torch.sqrt(1 - c) * out.float()) / torch.sqrt(c)

    def add_noise(self, x0, noise, c):
        c = c.float().view(-1, *([1] * (x0.dim() - 1)))
        if self.family == "flow":
            return (1 - c) * x0.float() + c * noise.float()
        return torch.sqrt(c) * x0.float() + torch.sqrt(1 - c) * noise.float()


SIGMAS = [1.0, 0.75, 0.5, 0.25, 0.0]
ALPHA_BARS = [0.05, 0.3, 0.6, 0.85, 0.99]


def _stub(family: str):
    c = torch.tensor(SIGMAS if family == "flow" else ALPHA_BARS)
    schedule = Schedule(t_model=torch.arange(4).float(), c=c[:-1], c_next=c[1:])
    kernel = FlowODE() if family == "flow" else DDIM(noise_level=0.0)
    return Stub(family, 4), schedule, kernel


def _m(family: str, i: int, a: float) -> tuple[float, float]:
    """Step i's factor m_i(a) and dm_i/da, by hand. Flow: x' = x + a x dt. DDIM eta 0 with eps = a x:
    x0 = (x - sqrt(1 - ab) a x) / sqrt(ab), x' = sqrt(ab') x0 + sqrt(1 - ab') a x."""
    if family == "flow":
        dt = SIGMAS[i + 1] - SIGMAS[i]
        return 1 + a * dt, dt
    ab, abn = ALPHA_BARS[i], ALPHA_BARS[i + 1]
    m = math.sqrt(abn / ab) * (1 - math.sqrt(1 - ab) * a) + math.sqrt(1 - abn) * a
    return m, -math.sqrt(abn) * math.sqrt(1 - ab) / math.sqrt(ab) + math.sqrt(1 - abn)


def _batch(n: int = 3, seeds: torch.Tensor = SEEDS) -> SampleBatch:
    return SampleBatch(final_latents=torch.zeros(n), images=torch.zeros(n), prompts=["p"] * n,
                       metadata=[{}] * n, group_ids=torch.zeros(n, dtype=torch.long), advantages=torch.zeros(n),
                       mask=torch.ones(n, dtype=torch.bool), rewards={}, cond=Cond({"e": torch.zeros(n, 1)}),
                       guidance_scale=1.0, seeds=seeds)


def _x_init(seeds=SEEDS) -> torch.Tensor:
    return torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def _bound(name, options, family, rewards=None):
    stub, schedule, kernel = _stub(family)
    algo = build_algorithm(name, options)
    algo.bind(RunContext(rewards=rewards or [(Brightness(), 1.0)], schedule=schedule, kernel=kernel,
                         deterministic_kernel=kernel))
    return algo, stub


# ---- the truncated sampler -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flow", "diffusion"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_draft_k_gradient_is_the_closed_form_and_zero_before_the_last_k_steps(family, k):
    algo, stub = _bound("draft", {"k": k}, family)
    loss, metrics = algo.loss(_batch(), stub)
    loss.backward()
    a = stub.a.detach().tolist()
    factors = [_m(family, i, a[i]) for i in range(4)]
    prod = math.prod(f for f, _ in factors)
    mean_init = _x_init().mean(dim=(1, 2, 3))  # [B]
    # L = -mean_b mean(x_final_b) = -prod_i m_i * mean_b mean(x_init_b); only the last k steps carry grad
    assert loss.item() == pytest.approx(-prod * mean_init.mean().item(), rel=1e-5)
    expected = [0.0 if i < 4 - k else -mean_init.mean().item() * prod / factors[i][0] * factors[i][1]
                for i in range(4)]
    torch.testing.assert_close(stub.a.grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    assert all(stub.a.grad[i] == 0 for i in range(4 - k))  # exactly zero, not small
    assert metrics["backprop/k"] == k


def test_checkpointing_gives_the_same_gradients_on_a_real_model():
    gen = build_generator("flow", build_flow_pipeline(seed=0), max_sequence_length=0)
    gen.setup_finetune(FinetuneSpec(rank=4, alpha=4.0))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move LoRA B off zero so that every LoRA weight gets a gradient
        for p in gen.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    schedule = gen.schedule(4)
    kernel = gen.make_kernel("ode", 0.0, schedule)
    prompts = ["a red circle", "two blue squares"]
    cond = gen.encode(prompts)
    seeds = torch.tensor([5, 6])
    grads = []
    for ckpt in (False, True):
        sampler = DifferentiableSampler(gen, schedule, kernel, checkpointing=ckpt)
        images = sampler.decode(sampler.truncated(seeds, cond, 1.0, k=3))
        images.mean().backward()
        grads.append([p.grad.clone() for p in gen.trainable_parameters()])
        for p in gen.trainable_parameters():
            p.grad = None
    assert any(gr.abs().sum() > 0 for gr in grads[0])
    for plain, ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(plain, ckpt, rtol=1e-5, atol=1e-8)


def test_resampling_reproduces_the_rollout_images():
    gen = build_generator("flow", build_flow_pipeline(seed=0), max_sequence_length=0)
    gen.setup_finetune(FinetuneSpec(rank=4, alpha=4.0))
    schedule = gen.schedule(4)
    kernel = gen.make_kernel("ode", 0.0, schedule)
    prompts = ["a red circle", "two blue squares"]
    seeds = [101, 202]
    ro = run_rollout(gen, schedule, kernel, prompts, [{}, {}], torch.tensor([0, 1]), seeds,
                     RolloutPlan(store_steps=False, deterministic_kernel=kernel))
    sampler = DifferentiableSampler(gen, schedule, kernel)
    images = sampler.decode(sampler.truncated(torch.tensor(seeds), ro.cond, 1.0, k=2))
    assert torch.equal(images.detach(), ro.images)


# ---- ReFL ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_refl_hinge_by_hand(family):
    # S = 4 and t in [0.5, 0.75) pins the step to t = 2
    stub, _, _ = _stub(family)
    a = stub.a.detach().tolist()
    x_t = _m(family, 0, a[0])[0] * _m(family, 1, a[1])[0] * _x_init()
    mean_t = x_t.mean(dim=(1, 2, 3))
    if family == "flow":  # x0_hat = x_t - sigma_2 a_2 x_t
        coef, dcoef = 1 - SIGMAS[2] * a[2], -SIGMAS[2]
    else:  # x0_hat = (x_t - sqrt(1 - ab_2) a_2 x_t) / sqrt(ab_2)
        ab = ALPHA_BARS[2]
        coef, dcoef = (1 - math.sqrt(1 - ab) * a[2]) / math.sqrt(ab), -math.sqrt(1 - ab) / math.sqrt(ab)
    r = coef * mean_t
    c = float(r.sort().values[1:].mean())  # between the lowest and the middle reward: some samples above c
    lam = 0.5
    for target in (c, float(r.min()) - 1.0, None):
        algo, stub = _bound("refl", {"t_min": 0.5, "t_max": 0.75, "target": target, "scale": lam}, family)
        loss, metrics = algo.loss(_batch(), stub)
        loss.backward()
        assert metrics["refl/step"] == 2
        if target is None:
            exp_loss, exp_grad = -lam * r.mean(), -lam * dcoef * mean_t.mean()
        else:
            active = (r < target).float()
            exp_loss = lam * torch.relu(target - r).mean()
            exp_grad = -lam * (active * dcoef * mean_t).mean()
        assert loss.item() == pytest.approx(float(exp_loss), rel=1e-5, abs=1e-8)
        expected = torch.zeros(4)
        expected[2] = exp_grad
        torch.testing.assert_close(stub.a.grad, expected, rtol=1e-5, atol=1e-8)
        if target is not None and target < float(r.min()):
            assert torch.all(stub.a.grad == 0)  # every reward above c: the hinge gives no gradient at all


def test_refl_step_is_seeded_and_in_range():
    algo, _ = _bound("refl", {}, "flow")  # S = 4, t_min 0.75: steps 3..3
    assert {algo.draw_step(torch.tensor([s, s + 1])) for s in range(20)} == {3}
    algo, _ = _bound("refl", {"t_min": 0.25, "t_max": 1.0}, "flow")
    draws = [algo.draw_step(torch.tensor([s, s + 1])) for s in range(60)]
    assert set(draws) == {1, 2, 3}
    assert draws == [algo.draw_step(torch.tensor([s, s + 1])) for s in range(60)]
    with pytest.raises(UserError, match="no sampling step"):
        _bound("refl", {"t_min": 0.3, "t_max": 0.45}, "flow")  # 1.2 <= i < 1.8: no step


# ---- DRaFT-LV -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_draft_lv_by_hand(family):
    n = 3
    algo, stub = _bound("draft", {"lv": True, "lv_samples": n}, family)
    loss, _ = algo.loss(_batch(), stub)
    loss.backward()
    a = stub.a.detach().tolist()
    factors = [_m(family, i, a[i]) for i in range(4)]
    gens = [torch.Generator().manual_seed(int(s)) for s in SEEDS]
    x0 = torch.stack([torch.randn(SHAPE, generator=g) for g in gens]) * math.prod(f for f, _ in factors)
    c = SIGMAS[3] if family == "flow" else ALPHA_BARS[3]  # the last step's coordinate
    means = []
    for _ in range(n):  # each sample's generator continues after its initial noise
        eps = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
        x1 = (1 - c) * x0 + c * eps if family == "flow" else math.sqrt(c) * x0 + math.sqrt(1 - c) * eps
        means.append(x1.mean(dim=(1, 2, 3)))
    mean_x1 = torch.stack(means).mean()
    assert loss.item() == pytest.approx(-factors[3][0] * mean_x1.item(), rel=1e-5)
    expected = torch.tensor([0.0, 0.0, 0.0, -factors[3][1] * mean_x1.item()])
    torch.testing.assert_close(stub.a.grad, expected, rtol=1e-5, atol=1e-7)


def test_draft_lv_needs_k1():
    with pytest.raises(UserError, match="k: 1"):
        build_algorithm("draft", {"lv": True, "k": 2})


# ---- AlignProp ------------------------------------------------------------------------------------------------------


def test_alignprop_k_is_seeded_and_in_range():
    algo, stub = _bound("alignprop", {"k_min": 2, "k_max": 3}, "flow")
    draws = [algo.draw_k(torch.tensor([s, 7])) for s in range(60)]
    assert set(draws) == {2, 3}
    assert draws == [algo.draw_k(torch.tensor([s, 7])) for s in range(60)]
    algo, stub = _bound("alignprop", {}, "flow")  # default: 1 .. all 4 steps
    assert set(algo.draw_k(torch.tensor([s])) for s in range(100)) == {1, 2, 3, 4}
    # the K used by the loss is the drawn one, and the gradient stops before it
    algo, stub = _bound("alignprop", {"k_min": 2, "k_max": 3}, "flow")
    k = algo.draw_k(SEEDS)
    _, metrics = algo.loss(_batch(), stub)
    assert metrics["backprop/k"] == k
    metrics_loss, _ = algo.loss(_batch(), stub)
    metrics_loss.backward()
    assert torch.all(stub.a.grad[: 4 - k] == 0) and torch.all(stub.a.grad[4 - k :] != 0)
    with pytest.raises(UserError, match="k_max"):
        build_algorithm("alignprop", {"k_min": 3, "k_max": 2})


# ---- rewards --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["refl", "draft", "alignprop"])
def test_error_when_no_reward_is_differentiable(name):
    with pytest.raises(UserError, match=f"algorithm '{name}'.*'verdict' is not differentiable"):
        _bound(name, {}, "flow", rewards=[(Verdict(), 1.0)])
    with pytest.raises(UserError, match="needs a differentiable reward.*'brightness'"):
        _bound(name, {}, "flow", rewards=[(Brightness(), 0.0), (Verdict(), 0.0)])
    algo, _ = _bound(name, {}, "flow", rewards=[(Brightness(), 1.0), (Verdict(), 0.0)])  # verdict: logged only
    assert [r.name for r, _ in algo.used_rewards] == ["brightness"]


# ---- end to end ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("refl", {"target": None, "scale": 1.0}), ("draft", {"k": 2}),
                                           ("draft", {"lv": True}), ("alignprop", {"k_max": 3})])
def test_brightness_rises_through_the_trainer(tmp_path, name, options):
    overrides = [f"run_dir={tmp_path / 'run'}", "eval.enabled=false", "log.progress=false", "checkpoint.every=0",
                 "model.max_sequence_length=0", "data.prompts_per_iter=2", "data.group_size=4",
                 "sampling.num_steps=4", "sampling.kernel=ode", "sampling.noise_level=0", "train.iterations=3",
                 "train.lr=1e-1", "train.skip_zero_variance=false", f"algorithm.name={name}"]
    overrides += [f"algorithm.options.{k}={'null' if v is None else v}" for k, v in options.items()]
    cfg = load_train_config(None, overrides)
    tr = Trainer(cfg, pipeline=("flow", build_flow_pipeline(seed=0)),
                 rewards=[(Brightness(), 1.0), (Verdict(), 0.0)])
    tr.generator.decode = linear_decode
    tr.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    rewards = [r["reward/brightness/mean"] for r in rows]
    assert rewards[2] > rewards[0] + 0.01, rewards
    assert all("reward/verdict/mean" in r for r in rows)  # the weight-0 reward is logged next to the trained one
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    if name != "refl" and not options.get("lv"):  # before the first update the loss re-generates the rollout's images
        assert rows[0]["backprop/brightness"] == pytest.approx(rows[0]["reward/brightness/mean"], abs=1e-6)


def test_trainer_rejects_a_non_differentiable_reward(tmp_path):
    cfg = load_train_config(None, [f"run_dir={tmp_path / 'run'}", "eval.enabled=false", "model.max_sequence_length=0",
                                   "sampling.kernel=ode", "algorithm.name=draft"])
    with pytest.raises(UserError, match="'verdict' is not differentiable"):
        Trainer(cfg, pipeline=("flow", build_flow_pipeline(seed=0)), rewards=[(Verdict(), 1.0)])


# ---- recipes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, algorithm", [("refl_shapes.yaml", "refl"), ("draft_shapes.yaml", "draft"),
                                               ("alignprop_shapes.yaml", "alignprop")])
def test_recipes_validate_and_build(recipe, algorithm):
    from visalign.algorithms._reward_backprop import differentiable_rewards
    from visalign.rewards import build_reward

    cfg = load_train_config(RECIPES / recipe, [])
    algo = build_algorithm(cfg.algorithm.name, cfg.algorithm.options)
    assert algo.name == algorithm and cfg.model.name == "shapes-flow"
    assert cfg.sampling.kernel in algo.kernels
    assert [(r.name, r.weight) for r in cfg.rewards] == [("shapes_rm", 1.0), ("shapes_strict", 0.0)]
    rewards = [(build_reward(r.name, **r.options), r.weight) for r in cfg.rewards]
    assert [r.name for r, _ in differentiable_rewards(rewards, algorithm)] == ["shapes_rm"]
