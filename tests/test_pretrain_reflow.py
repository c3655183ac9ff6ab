"""Reflow pretraining: the teacher's pairs land in the student's latent space, are cached and reproducible, and
the loss runs the straight path between a pair's noise and its teacher sample."""

from __future__ import annotations

import pytest
import torch

from visalign.config_io import load_config
from visalign.errors import UserError
from visalign.pretrain.build import DiffusionSpec, build_diffusion_pipeline, build_flow_pipeline
from visalign.pretrain.checkpoint import load_checkpoint
from visalign.pretrain.config import PretrainConfig, model_spec
from visalign.pretrain.data import ShapesData
from visalign.pretrain.losses import denoiser_loss
from visalign.pretrain.reflow import load_or_generate_pairs, teacher_latents
from visalign.pretrain.teacher import DiffusionTeacher


def _teacher() -> DiffusionTeacher:
    pipe = build_diffusion_pipeline(DiffusionSpec(prediction_type="sample"), seed=0)
    student_vae = build_diffusion_pipeline(DiffusionSpec(), seed=0).vae  # same seed: the same autoencoder
    pipe.vae.register_to_config(scaling_factor=0.2, shift_factor=0.0)  # SD1.5 convention
    student_vae.register_to_config(scaling_factor=0.5, shift_factor=-0.3)  # SD3 convention
    return DiffusionTeacher(pipe, student_vae, "t")


def _latent_shape(teacher: DiffusionTeacher) -> tuple[int, int, int]:
    size = teacher.pipe.unet.config.sample_size
    return (teacher.pipe.unet.config.in_channels, size, size)


def test_teacher_samples_decode_to_the_same_raw_latent_in_both_normalisations():
    teacher = _teacher()
    noise = torch.randn((2, *_latent_shape(teacher)), generator=torch.Generator().manual_seed(0))
    z_f = teacher_latents(teacher, noise, ["a red circle", "two blue stars"], steps=3)
    z_t = teacher.pipe(["a red circle", "two blue stars"], latents=noise.clone(), num_inference_steps=3,
                       guidance_scale=1.0, eta=0.0, output_type="latent", return_dict=False)[0]  # fmt: skip
    # the raw autoencoder latent by each convention: SD3 z / scale + shift, SD1.5 z / scale
    torch.testing.assert_close(z_f / 0.5 + (-0.3), z_t / 0.2, rtol=1e-5, atol=1e-5)


def test_pairs_are_cached_resumable_and_a_function_of_the_seed(tmp_path):
    teacher = _teacher()
    shape = _latent_shape(teacher)
    data = ShapesData(seed=3, tags=["single_object", "counting"])
    a = load_or_generate_pairs(teacher, data, shape, 10, 2, 4, out_dir=tmp_path / "a")
    assert len(a) == 10 and a.noise.shape == (10, *shape) == a.latents.shape
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "chunk-00000.safetensors",
        "chunk-00001.safetensors",
        "chunk-00002.safetensors",
    ]
    assert set(a.prompts) <= {m["prompt"] for m in data.items}
    (tmp_path / "a" / "chunk-00001.safetensors").unlink()  # a run killed before chunk 1 was written
    resumed = load_or_generate_pairs(teacher, data, shape, 10, 2, 4, out_dir=tmp_path / "a")
    fresh = load_or_generate_pairs(teacher, data, shape, 10, 2, 4, out_dir=tmp_path / "b")
    for other in (resumed, fresh):
        assert torch.equal(other.noise, a.noise) and torch.equal(other.latents, a.latents)
        assert other.prompts == a.prompts
    other_data = ShapesData(seed=4, tags=["single_object", "counting"])
    other_seed = load_or_generate_pairs(teacher, other_data, shape, 10, 2, 4, out_dir=tmp_path / "c")
    assert not torch.equal(other_seed.noise, a.noise) and other_seed.prompts != a.prompts
    with pytest.raises(UserError, match="chunk-00000.safetensors"):  # other teacher steps: never mixed into the cache
        load_or_generate_pairs(teacher, data, shape, 10, 5, 4, out_dir=tmp_path / "a")

    z1, n1, p1 = a.batch(data.rng("reflow", 7), 5, prompt_dropout=0.5)
    z2, n2, p2 = a.batch(data.rng("reflow", 7), 5, prompt_dropout=0.5)
    assert torch.equal(z1, z2) and torch.equal(n1, n2) and p1 == p2
    rows = [int((a.noise == n).flatten(1).all(1).nonzero()) for n in n1]
    assert torch.equal(z1, a.latents[rows])  # each noise stays with its own teacher sample


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
def test_reflow_loss_runs_the_path_between_the_pair(prediction):
    """x_t = (1 - sigma) z + sigma eps with the pair's own eps; target eps - z (velocity) or z (sample)."""
    cfg = load_config(PretrainConfig, None, ["flow.num_layers=1", "flow.num_heads=2", "flow.head_dim=8",
                                             f"flow.prediction={prediction}"])  # fmt: skip
    pipe = build_flow_pipeline(model_spec(cfg), seed=0)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(3, 4, 16, 16, generator=gen)
    eps = torch.randn(3, 4, 16, 16, generator=gen)
    prompts = ["a red circle", "", "two blue stars"]
    loss = denoiser_loss(pipe, "flow", cfg, None, prompts, torch.Generator().manual_seed(9), pair=(z, eps))

    sigma = torch.sigmoid(torch.randn(3, generator=torch.Generator().manual_seed(9)))  # logit-normal(0, 1)
    s = sigma.view(3, 1, 1, 1)
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=0)  # fmt: skip
    pred = pipe.transformer(hidden_states=(1 - s) * z + s * eps, timestep=sigma * 1000,
                            encoder_hidden_states=embeds, pooled_projections=pooled).sample  # fmt: skip
    target = z if prediction == "sample" else eps - z
    assert torch.allclose(loss, ((pred - target) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_reflow_without_a_teacher_is_refused():
    with pytest.raises(UserError, match="flow.teacher"):
        load_config(PretrainConfig, None, ["flow.reflow_pairs=100"])


def test_pretrain_with_reflow_trains_on_cached_teacher_pairs(tmp_path):
    """The whole path a user runs: a diffusion teacher folder, then ``visalign pretrain`` of a flow model on its
    autoencoder with reflow pairs; a rerun reuses the cached pairs instead of sampling the teacher again."""
    from rich.console import Console

    from test_pretrain_loop import TINY
    from visalign.models.loading import load_pipeline
    from visalign.pretrain.loop import run_pretrain

    quiet = Console(quiet=True)
    teacher_overrides = ["family=diffusion", "diffusion.prediction_type=sample", f"run_dir={tmp_path / 'teacher'}",
                         "vae.steps=2", "train.steps=2"]  # fmt: skip
    teacher = run_pretrain(load_config(PretrainConfig, None, [*TINY, *teacher_overrides]), quiet)
    student_overrides = ["family=flow", f"run_dir={tmp_path / 'student'}", f"vae.init_from={teacher}",
                         f"flow.teacher={teacher}", "flow.reflow_pairs=6", "flow.reflow_teacher_steps=2",
                         "train.steps=2"]  # fmt: skip
    cfg = load_config(PretrainConfig, None, [*TINY, *student_overrides])
    model = run_pretrain(cfg, quiet)
    chunk = tmp_path / "student" / "reflow" / "chunk-00000.safetensors"
    state = load_checkpoint(chunk)  # safetensors + JSON: read without unpickling
    assert state["noise"].shape[0] == 6 and len(state["prompts"]) == 6
    family, pipe = load_pipeline(model)
    assert family == "flow" and pipe.transformer is not None
    stamp = chunk.stat().st_mtime_ns
    run_pretrain(load_config(PretrainConfig, None, [*TINY, *student_overrides, "train.steps=3"]), quiet)
    assert chunk.stat().st_mtime_ns == stamp  # the pairs were read back, not sampled again
