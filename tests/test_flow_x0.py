"""x0-predicting flow folders (DPMSolverMultistepScheduler over flow sigmas, ``prediction_type: sample``): the
adapter hands every kernel and algorithm the velocity of the same straight path, v = (x - x0_hat) / sigma."""

from __future__ import annotations

import torch

from visalign.models import build_generator
from visalign.pretrain.build import FlowSpec, build_flow_pipeline

torch.set_num_threads(1)


def _call(pipe, x, t, embeds, pooled):
    return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds,
                            pooled_projections=pooled).sample  # fmt: skip


def test_velocity_from_x0_uses_the_schedules_exact_sigma_and_t_over_1000_elsewhere():
    pipe = build_flow_pipeline(FlowSpec(prediction="sample", shift=3.0), seed=0)
    gen = build_generator("flow", pipe, max_sequence_length=0)
    assert gen.predicts_sample
    cond = gen.encode(["a red circle", "a blue star"])
    embeds, _, pooled, _ = pipe.encode_prompt(["a red circle", "a blue star"], None, None,
                                              do_classifier_free_guidance=False, max_sequence_length=0)  # fmt: skip
    x = torch.randn(2, *gen.latent_shape(), generator=torch.Generator().manual_seed(0))
    schedule = gen.schedule(10)
    # the scheduler rounds its timesteps; the network sees them rounded, the conversion uses the exact sigma
    i = 3
    t = schedule.t_model[i].expand(2)
    sigma = float(schedule.c[i])
    assert abs(float(t[0]) / 1000.0 - sigma) > 1e-5  # the rounding this test is about
    with torch.no_grad():
        got = gen.predict(x, t, cond)
        x0 = _call(pipe, x, t, embeds, pooled)
    torch.testing.assert_close(got, (x - x0) / sigma, rtol=1e-5, atol=1e-5)
    # a time no schedule produced (forward-process training draws sigma and feeds sigma * 1000)
    t_free = torch.tensor([437.5, 912.25])
    with torch.no_grad():
        got = gen.predict(x, t_free, cond)
        x0 = _call(pipe, x, t_free, embeds, pooled)
    torch.testing.assert_close(got, (x - x0) / (t_free / 1000.0).view(2, 1, 1, 1), rtol=1e-5, atol=1e-5)


def test_velocity_models_are_passed_through():
    pipe = build_flow_pipeline(FlowSpec(), seed=0)
    gen = build_generator("flow", pipe, max_sequence_length=0)
    assert not gen.predicts_sample
    cond = gen.encode(["a red circle"])
    embeds, _, pooled, _ = pipe.encode_prompt(["a red circle"], None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=0)  # fmt: skip
    x = torch.randn(1, *gen.latent_shape(), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(gen.predict(x, t, cond), _call(pipe, x, t, embeds, pooled))


def test_forward_process_regression_is_the_x0_error_for_an_x0_transformer_and_the_velocity_error_otherwise():
    """RAFT / RWR / AWM / DiffusionNFT / Diffusion-DPO regress in the network's own output space: for an x0
    transformer ||x0_hat - x_0||^2 (its pretraining loss), not the velocity error's 1 / sigma^2 multiple."""
    from visalign.algorithms._forward_process import forward_noise, regression_loss

    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    seeds = torch.tensor([11, 12, 13])
    for prediction in ("sample", "velocity"):
        pipe = build_flow_pipeline(FlowSpec(prediction=prediction), seed=0)
        gen = build_generator("flow", pipe, max_sequence_length=0)
        cond = gen.encode(["a red circle", "a blue star", "two squares"])
        embeds, _, pooled, _ = pipe.encode_prompt(["a red circle", "a blue star", "two squares"], None, None,
                                                  do_classifier_free_guidance=False, max_sequence_length=0)  # fmt: skip
        noised = forward_noise(x0, seeds, gen, "uniform", 0.0, 1.0)
        sigma = noised.level.view(3, 1, 1, 1)
        with torch.no_grad():
            loss = regression_loss(gen.predict(noised.x_t, noised.t_model, cond), noised)
            raw = _call(pipe, noised.x_t, noised.t_model, embeds, pooled)
        if prediction == "sample":  # the transformer's own output against the clean latents
            expected = ((raw - x0) ** 2).mean(dim=(1, 2, 3))
        else:
            expected = ((raw - (noised.noise - x0)) ** 2).mean(dim=(1, 2, 3))
        assert noised.x_t.shape == x0.shape and bool((sigma > 0).all())
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
