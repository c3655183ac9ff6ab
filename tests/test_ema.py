"""The EMA of the trainable weights: the RL trainer's fixed decay and pretraining's warmed-up one, bit for bit."""

from __future__ import annotations

import pytest
import torch

from visalign.models.ema import EMA


def _params(seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    return [("a.weight", torch.nn.Parameter(torch.randn(3, 4, generator=gen))),
            ("b.bias", torch.nn.Parameter(torch.randn(5, generator=gen)))]  # fmt: skip


def _train_steps(named, steps: int):
    for k in range(steps):
        with torch.no_grad():
            for _, p in named:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + k)))
        yield k


def test_fixed_decay_is_decay_times_ema_plus_the_rest_of_the_weights():
    named = _params()
    ema = EMA(named, 0.9)
    shadow = {n: p.detach().clone() for n, p in named}
    for _ in _train_steps(named, 5):
        ema.update()
        for n, p in named:
            shadow[n].mul_(0.9).add_(p.detach(), alpha=1 - 0.9)
    assert all(torch.equal(ema.shadow[n], shadow[n]) for n in shadow)


def test_warmup_decay_follows_the_pretraining_schedule():
    named = _params()
    ema = EMA(named, 0.999, warmup=True)
    assert [ema.decay_at(n) for n in (0, 1, 8)] == [0.1, 2 / 11, 0.5]
    assert ema.decay_at(10**6) == 0.999
    shadow = [p.detach().clone() for _, p in named]
    for k in _train_steps(named, 6):
        ema.update()
        weight = 1.0 - min(0.999, (1.0 + k) / (10.0 + k))
        for s, (_, p) in zip(shadow, named, strict=True):
            s.lerp_(p.detach(), weight)
    assert ema.updates == 6
    assert all(torch.equal(ema.shadow[n], s) for (n, _), s in zip(named, shadow, strict=True))


def test_a_resumed_warmup_average_continues_where_it_stopped():
    straight_params, resumed_params = _params(), _params()
    straight = EMA(straight_params, 0.99, warmup=True)
    for _ in _train_steps(straight_params, 7):
        straight.update()
    first = EMA(resumed_params, 0.99, warmup=True)
    steps = _train_steps(resumed_params, 7)
    for _ in range(3):
        next(steps)
        first.update()
    resumed = EMA(resumed_params, 0.99, warmup=True)
    resumed.load_state_dict(first.state_dict())
    resumed.updates = 3
    for _ in steps:
        resumed.update()
    assert all(torch.equal(straight.shadow[n], resumed.shadow[n]) for n in straight.shadow)


def test_swapped_restores_and_apply_keeps_the_average():
    named = _params()
    ema = EMA(named, 0.5)
    for _ in _train_steps(named, 2):
        ema.update()
    live = {n: p.detach().clone() for n, p in named}
    with ema.swapped():
        assert all(torch.equal(p, ema.shadow[n]) for n, p in named)
    assert all(torch.equal(p, live[n]) for n, p in named)
    ema.apply()
    assert all(torch.equal(p, ema.shadow[n]) for n, p in named)
    with pytest.raises(KeyError):
        ema.load_state_dict({"a.weight": ema.shadow["a.weight"]})
