"""Pretraining: a tiny two-stage run resumes bit-for-bit, writes its run folder, and exports a loadable model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from rich.console import Console

from visalign.config_io import load_config
from visalign.errors import UserError
from visalign.models.loading import load_pipeline, sampler_defaults
from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.data import ShapesData
from visalign.pretrain.loop import run_pretrain

TINY = [
    "vae.block_out_channels=[8, 8, 8]",
    "vae.norm_num_groups=4",
    "vae.batch_size=4",
    "vae.stats_images=8",
    "text.hidden_size=16",
    "text.intermediate_size=32",
    "text.projection_dim=16",
    "flow.num_layers=1",
    "flow.num_heads=2",
    "flow.head_dim=8",
    "diffusion.block_out_channels=[8, 16]",
    "diffusion.cross_attention_levels=[true, false]",
    "diffusion.norm_num_groups=4",
    "diffusion.attention_head_dim=4",
    "train.batch_size=4",
    "train.warmup=2",
    "sample.steps=2",
    "log.every=1",
    "log.checkpoint_every=2",
    "log.sample_every=4",
    "log.eval_every=0",
    "log.eval_images_per_prompt=1",
    "log.grid_prompts=2",
    "log.final_images_per_prompt=0",
    "threads=1",
    "data_workers=0",  # one test below runs the worker process; spawning one costs seconds
]


def _config(tmp_path, family: str, vae_steps: int, steps: int, name: str) -> PretrainConfig:
    overrides = [f"family={family}", f"run_dir={tmp_path / name}", f"vae.steps={vae_steps}", f"train.steps={steps}"]
    return load_config(PretrainConfig, None, TINY + overrides)


def _weights(folder) -> dict[str, torch.Tensor]:
    _, pipe = load_pipeline(folder)
    net = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    return {**net.state_dict(), **{f"te.{k}": v for k, v in pipe.text_encoder.state_dict().items()}}


def test_batches_are_a_function_of_the_step():
    data = ShapesData(seed=3)
    a, b = data.batch("denoiser", 7, 6, prompt_dropout=0.5), data.batch("denoiser", 7, 6, prompt_dropout=0.5)
    assert torch.equal(a.images, b.images) and a.prompts == b.prompts
    assert a.images.shape == (6, 3, 64, 64) and -1 <= a.images.min() and a.images.max() <= 1
    assert not torch.equal(a.images, data.batch("denoiser", 8, 6).images)
    assert {m["prompt"] for m in a.metadata} <= {m["prompt"] for m in data.items}  # train split only


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_resume_matches_uninterrupted_run(tmp_path, family):
    quiet = Console(quiet=True)
    full = run_pretrain(_config(tmp_path, family, 3, 4, "full"), quiet)
    run_pretrain(_config(tmp_path, family, 2, 0, "resumed"), quiet)
    shutil.rmtree(tmp_path / "resumed" / "vae")  # as if killed in stage 1 after its step-2 checkpoint
    run_pretrain(_config(tmp_path, family, 3, 2, "resumed"), quiet)  # ... and in stage 2 after step 2
    resumed = run_pretrain(_config(tmp_path, family, 3, 4, "resumed"), quiet)
    ref, got = _weights(full), _weights(resumed)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    run = tmp_path / "full"
    for name in ("full", "resumed"):
        records = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "step" in r] == [1, 2, 3, 4]
        assert [r["vae_step"] for r in records if "vae_step" in r] == [1, 2, 3]
    assert (run / "samples" / "step-000004.png").is_file()
    assert (run / "vae" / "vae_report.json").is_file()
    assert sampler_defaults(full)["num_inference_steps"] == 2
    with pytest.raises(UserError, match="beyond train.steps=2"):  # a shorter run must not reuse a longer one
        run_pretrain(_config(tmp_path, family, 3, 2, "full"), quiet)
    info = json.loads((full / "visalign.json").read_text())
    assert info["family"] == family and info["training"]["denoiser_steps"] == 4


def test_a_data_worker_process_gives_the_same_weights(tmp_path):
    """Rendering and encoding in a spawned DataLoader worker (the recipes' default) must not change a bit."""
    quiet = Console(quiet=True)
    inline = run_pretrain(_config(tmp_path, "diffusion", 3, 4, "inline"), quiet)
    cfg = _config(tmp_path, "diffusion", 3, 4, "worker").model_copy(update={"data_workers": 1})
    worker = run_pretrain(cfg, quiet)
    ref, got = _weights(inline), _weights(worker)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    vae_ref = load_pipeline(inline)[1].vae.state_dict()
    vae_got = load_pipeline(worker)[1].vae.state_dict()
    assert all(torch.equal(vae_ref[k], vae_got[k]) for k in vae_ref)


def test_config_rejects_unknown_key(tmp_path):
    with pytest.raises(UserError, match="train.stepz"):
        load_config(PretrainConfig, None, ["train.stepz=3"])


def test_learning_rate_warms_up_holds_then_decays_linearly_to_zero():
    from visalign.lr_schedule import lr_factor

    # warm-up 4 steps, 20 steps in all, the last 5 decayed: factors by hand
    factors = [lr_factor(s, 4, 20, "constant", 5) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:15] == [1.0] * 11
    assert factors[15:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    # without decay the schedule is constant after the warm-up (a run is the prefix of a longer one)
    assert [lr_factor(s, 4) for s in range(3, 8)] == [1.0] * 5


def test_the_stages_learning_rates_are_the_formula_the_shipped_models_were_trained_with():
    """Bit for bit: min(1, (step + 1) / max(1, warmup)), then min(that, (total - step) / decay) with a decay."""
    from visalign.lr_schedule import lr_factor

    def recorded(step: int, warmup: int, total: int, decay: int) -> float:
        factor = min(1.0, (step + 1) / max(1, warmup))
        return min(factor, (total - step) / decay) if decay > 0 else factor

    for warmup, total, decay in [(0, 30, 0), (1, 30, 0), (50, 1200, 0), (200, 10000, 2000), (7, 40, 13), (3, 3, 3)]:
        for step in range(total):
            assert lr_factor(step, warmup, total, "constant", decay) == recorded(step, warmup, total, decay)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_loss_matches_the_hand_computed_target(tmp_path, prediction_type):
    """eps target, or v = sqrt(ab) eps - sqrt(1 - ab) z (Salimans & Ho), with ab from the zero-terminal-SNR schedule."""
    from visalign.pretrain.build import build_diffusion_pipeline
    from visalign.pretrain.config import model_spec
    from visalign.pretrain.losses import denoiser_loss

    zero_snr = prediction_type == "v_prediction"
    overrides = [f"diffusion.prediction_type={prediction_type}", f"diffusion.rescale_betas_zero_snr={zero_snr}"]
    cfg = load_config(PretrainConfig, None, [*TINY, "family=diffusion", *overrides])
    pipe = build_diffusion_pipeline(model_spec(cfg), seed=0)
    ab = pipe.scheduler.alphas_cumprod
    assert pipe.scheduler.config.prediction_type == prediction_type
    if zero_snr:  # the schedule ends at pure noise, where sampling starts
        assert ab[-1].item() == 0.0
    else:  # SD1.5's scaled-linear schedule keeps sqrt(ab_T) = 0.068 of the signal at t = 999
        assert abs(ab[-1].sqrt().item() - 0.0683) < 1e-3
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    loss = denoiser_loss(pipe, "diffusion", cfg, images, ["a red circle", "", "a blue star"], torch.Generator().manual_seed(5))

    gen = torch.Generator().manual_seed(5)  # the same draws, in the same order, done by hand
    z = pipe.vae.encode(images).latent_dist.mode() * pipe.vae.config.scaling_factor
    noise = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, 1000, (3,), generator=gen)
    a = ab[t].view(3, 1, 1, 1)
    x_t = a.sqrt() * z + (1 - a).sqrt() * noise
    emb = pipe.text_encoder(pipe.tokenizer(["a red circle", "", "a blue star"], padding="max_length",
                            max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids)[0]  # fmt: skip
    pred = pipe.unet(x_t, t, encoder_hidden_states=emb).sample
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z
    assert torch.allclose(loss, ((pred - target) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_train_tags_must_be_shapesworld_tags(tmp_path):
    cfg = load_config(PretrainConfig, None, [*TINY, "train.tags=[single_object, colors]"])
    data = ShapesData(0, 64, tags=cfg.train.tags)
    assert {m["tag"] for m in data.items} == {"single_object", "colors"}
    with pytest.raises(UserError, match="single_objekt"):
        load_config(PretrainConfig, None, [*TINY, "train.tags=[single_objekt]"])


def test_tag_weights_and_text_length_balance_set_the_mixture():
    import collections

    import numpy as np

    cfg = load_config(PretrainConfig, None, [*TINY, "train.tag_weights={text: 3}", "train.text_length_balanced=true"])
    data = ShapesData(0, 64, tag_weights=cfg.train.tag_weights, text_length_balanced=cfg.train.text_length_balanced)
    drawn = data.draw(np.random.default_rng(0), 9000)
    tags = collections.Counter(m["tag"] for m in drawn)
    assert abs(tags["text"] / 9000 - 3 / 9) < 0.02  # 3 against 1 for each of the six other tags
    assert abs(tags["colors"] / 9000 - 1 / 9) < 0.015
    lengths = collections.Counter(len(m["text"]) for m in drawn if m["tag"] == "text")
    assert all(abs(lengths[n] / tags["text"] - 1 / 3) < 0.03 for n in (1, 2, 3))  # 8 / 86 / 206 numbers
    plain = collections.Counter(len(m["text"]) for m in ShapesData(0, 64).draw(np.random.default_rng(0), 9000)
                                if m["tag"] == "text")  # fmt: skip
    assert plain[3] > 10 * plain[1]
    for bad, key in (("{text: 0}", "tag weights must be positive"), ("{txt: 2}", "txt")):
        with pytest.raises(UserError, match=key):
            load_config(PretrainConfig, None, [*TINY, f"train.tag_weights={bad}"])


def test_autoencoder_can_train_at_even_odds_while_its_scaling_follows_the_denoisers_mixture(tmp_path):
    from diffusers import AutoencoderKL

    mixture = ["train.tag_weights={text: 3}", "train.text_lengths=[1, 2]"]

    def stage_one(name: str, extra: list[str]) -> AutoencoderKL:
        cfg = load_config(PretrainConfig, None, [*TINY, f"run_dir={tmp_path / name}", "vae.steps=2", "train.steps=0", *extra])
        run_pretrain(cfg, Console(quiet=True))
        return AutoencoderKL.from_pretrained(tmp_path / name / "vae")

    plain = stage_one("plain", [])
    even = stage_one("even", [*mixture, "vae.train_mixture=false"])
    mixed = stage_one("mixed", mixture)
    # Stage 1 at even odds sees the batches of a run without the mixture: the same weights, bit for bit ...
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), even.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(even.state_dict().values(), mixed.state_dict().values(), strict=True))
    # ... while its latent scale is measured on the scenes the denoiser will be shown.
    assert even.config.scaling_factor != plain.config.scaling_factor


def test_text_lengths_keep_only_numbers_of_those_digit_counts():
    cfg = load_config(PretrainConfig, None, [*TINY, "train.tags=[text, colors]", "train.text_lengths=[1, 2]"])
    data = ShapesData(0, 64, tags=cfg.train.tags, text_lengths=cfg.train.text_lengths)
    text = [m for m in data.items if m["tag"] == "text"]
    assert {len(m["text"]) for m in text} == {1, 2} and len(text) == 8 + 86
    assert any(m["tag"] == "colors" for m in data.items)
    with pytest.raises(UserError, match="digit counts from 1 to 3"):
        load_config(PretrainConfig, None, [*TINY, "train.text_lengths=[4]"])


def _normalised_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """SD3's latent normalisation written out: (posterior mode - shift_factor) * scaling_factor."""
    return (vae.encode(images).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor


def _transformer_output(pipe, x_t: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The stock pipeline's prompt encoding (no T5 tokens) and the transformer at timestep 1000 sigma."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=0)  # fmt: skip
    return pipe.transformer(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=embeds,
                            pooled_projections=pooled).sample  # fmt: skip


def test_flow_loss_matches_the_hand_computed_target_with_shifted_logit_normal_sigma(tmp_path):
    """sigma = sigmoid(m + s n) (SD3's logit-normal), x_t = (1 - sigma) z + sigma eps, target eps - z."""
    from visalign.pretrain.build import build_flow_pipeline
    from visalign.pretrain.config import model_spec
    from visalign.pretrain.losses import denoiser_loss

    overrides = ["family=flow", "flow.logit_mean=1.5", "flow.logit_std=0.5", "flow.qk_norm=rms_norm"]
    cfg = load_config(PretrainConfig, None, [*TINY, *overrides])
    pipe = build_flow_pipeline(model_spec(cfg), seed=0)
    assert pipe.transformer.config.qk_norm == "rms_norm"
    assert pipe.transformer.transformer_blocks[0].attn.norm_q is not None
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    prompts = ["a red circle", "", "a blue star"]
    loss = denoiser_loss(pipe, "flow", cfg, images, prompts, torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)
    z = _normalised_latents(pipe.vae, images)
    noise = torch.randn(z.shape, generator=gen)
    n = torch.randn(3, generator=gen)
    sigma = 1.0 / (1.0 + torch.exp(-(1.5 + 0.5 * n)))
    s = sigma.view(3, 1, 1, 1)
    pred = _transformer_output(pipe, (1 - s) * z + s * noise, sigma, prompts)
    assert torch.allclose(loss, ((pred - (noise - z)) ** 2).mean(), rtol=1e-5, atol=1e-6)

    # with a teacher, its x0 replaces the data where it is valid: v target (x_t - x0_hat) / sigma there
    class StubTeacher:
        def __init__(self):
            self.x0_hat = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
            self.valid = torch.tensor([True, False, True])

        def x0(self, x_t, sigma_in, prompts_in):
            assert torch.allclose(sigma_in, sigma) and prompts_in == prompts
            return self.x0_hat, self.valid

    teacher = StubTeacher()
    loss_t = denoiser_loss(pipe, "flow", cfg, images, prompts, torch.Generator().manual_seed(7), teacher)
    x_t = (1 - s) * z + s * noise
    target = (x_t - teacher.x0_hat) / s
    target[1] = noise[1] - z[1]  # the row outside the teacher's schedule keeps the data target
    assert torch.allclose(loss_t, ((pred - target) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_flow_max_sigma_scales_every_training_sigma(tmp_path):
    """flow.max_sigma = 0.5 with uniform sigma: sigma = 0.5 u, and the model is told that sigma."""
    from visalign.pretrain.build import build_flow_pipeline
    from visalign.pretrain.config import model_spec
    from visalign.pretrain.losses import denoiser_loss

    overrides = ["family=flow", "flow.timestep_sampling=uniform", "flow.max_sigma=0.5"]
    cfg = load_config(PretrainConfig, None, [*TINY, *overrides])
    pipe = build_flow_pipeline(model_spec(cfg), seed=0)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    prompts = ["a red circle", "a blue star"]
    loss = denoiser_loss(pipe, "flow", cfg, images, prompts, torch.Generator().manual_seed(4))

    gen = torch.Generator().manual_seed(4)
    z = _normalised_latents(pipe.vae, images)
    noise = torch.randn(z.shape, generator=gen)
    sigma = 0.5 * torch.rand(2, generator=gen)
    s = sigma.view(2, 1, 1, 1)
    pred = _transformer_output(pipe, (1 - s) * z + s * noise, sigma, prompts)
    assert torch.allclose(loss, ((pred - (noise - z)) ** 2).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="max_sigma"):
        load_config(PretrainConfig, None, [*TINY, "flow.max_sigma=1.5"])


def test_flow_pixel_loss_decodes_the_x0_estimate_on_low_noise_rows(tmp_path):
    """loss = MSE(v_hat, eps - z) + w * MSE(decode(x_t - sigma v_hat), image) over the rows with sigma <= max."""
    from visalign.pretrain.build import build_flow_pipeline
    from visalign.pretrain.config import model_spec
    from visalign.pretrain.losses import denoiser_loss

    overrides = ["family=flow", "flow.pixel_loss=2.5", "flow.pixel_loss_max_sigma=0.5"]
    cfg = load_config(PretrainConfig, None, [*TINY, *overrides])
    pipe = build_flow_pipeline(model_spec(cfg), seed=0)
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    prompts = ["a red circle", "", "a blue star", "two green squares"]
    loss = denoiser_loss(pipe, "flow", cfg, images, prompts, torch.Generator().manual_seed(3))

    gen = torch.Generator().manual_seed(3)
    vae = pipe.vae
    z = _normalised_latents(vae, images)
    noise = torch.randn(z.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(4, generator=gen))
    s = sigma.view(4, 1, 1, 1)
    x_t = (1 - s) * z + s * noise
    v_hat = _transformer_output(pipe, x_t, sigma, prompts)
    rows = sigma <= 0.5
    assert 0 < int(rows.sum()) < 4  # the seed gives both kinds of rows
    x0_hat = x_t - s * v_hat
    decoded = vae.decode(x0_hat[rows] / vae.config.scaling_factor + vae.config.shift_factor).sample
    expected = ((v_hat - (noise - z)) ** 2).mean() + 2.5 * ((decoded - images[rows]) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(UserError, match="pixel_loss"):
        load_config(PretrainConfig, None, [*TINY, "flow.pixel_loss=1", "flow.teacher=shapes-diffusion"])


def test_text_towers_start_from_another_pipelines_text_encoder(tmp_path):
    from visalign.pretrain.build import (
        DiffusionSpec,
        FlowSpec,
        TextSpec,
        build_diffusion_pipeline,
        build_flow_pipeline,
    )
    from visalign.pretrain.denoiser_setup import init_text_towers

    source = build_diffusion_pipeline(seed=4)
    source.save_pretrained(tmp_path / "source")
    flow = build_flow_pipeline(seed=0)
    init_text_towers(flow, str(tmp_path / "source"))
    expected = source.text_encoder.state_dict()
    for tower in (flow.text_encoder, flow.text_encoder_2):
        got = tower.text_model.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)

    wider = build_diffusion_pipeline(DiffusionSpec(text=TextSpec(hidden_size=32, intermediate_size=64)), seed=4)
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(UserError, match="does not fit text_encoder"):
        init_text_towers(build_flow_pipeline(FlowSpec()), str(tmp_path / "wider"))
    other_words = build_diffusion_pipeline(DiffusionSpec(text=TextSpec(words=("<pad>", "<bos>", "<unk>", "<eos>", "red", "blue"))), seed=4)
    other_words.save_pretrained(tmp_path / "words")
    with pytest.raises(UserError, match="vocabulary differs"):
        init_text_towers(build_flow_pipeline(FlowSpec()), str(tmp_path / "words"))


def test_decoder_input_adds_noise_relative_to_the_latent_std():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from visalign.pretrain.vae_stage import decoder_input

    moments = torch.cat([torch.randn(8, 4, 16, 16) * 3.0 + 1.0, torch.full((8, 4, 16, 16), -30.0)], dim=1)
    post = DiagonalGaussianDistribution(moments)
    plain = decoder_input(post, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(plain, post.sample(generator=torch.Generator().manual_seed(3)))
    gen = torch.Generator().manual_seed(3)
    expected = post.sample(generator=gen)
    expected = expected + 0.25 * expected.std() * torch.randn(expected.shape, generator=gen)
    noisy = decoder_input(post, 0.25, torch.Generator().manual_seed(3))
    assert torch.allclose(noisy, expected)
    # the added noise is a quarter of the latents' own spread (std 3), whatever their scale
    assert abs((noisy - plain).std().item() / plain.std().item() - 0.25) < 0.01


def test_model_card_names_the_data_mixture():
    from visalign.pretrain.card import _mixture

    assert _mixture(load_config(PretrainConfig, None, TINY)) == ", tags drawn uniformly"
    weighted = load_config(PretrainConfig, None, [*TINY, "train.tag_weights={text: 3}", "train.text_length_balanced=true", "train.text_lengths=[1, 2]"])  # fmt: skip
    assert _mixture(weighted) == (", tags drawn with odds text 3 (1 for each other tag), numbers of 1, 2 digit(s) "
                                  "only, text numbers by a uniform digit count first")  # fmt: skip
    even_vae = load_config(PretrainConfig, None, [*TINY, "train.tag_weights={text: 3}", "vae.train_mixture=false"])
    assert _mixture(even_vae) == (", tags drawn with odds text 3 (1 for each other tag); the autoencoder's scenes "
                                  "at even odds over every tag and number length")  # fmt: skip


def test_default_mixture_draws_a_uniform_tag_then_a_uniform_item():
    # The shipped flow recipe's batches (and so its byte-for-byte reproduction) rest on this exact draw order.
    import numpy as np

    data = ShapesData(0, 64)
    tags = sorted({m["tag"] for m in data.items})
    rng = np.random.default_rng(7)
    expected = []
    for tag in [tags[rng.integers(len(tags))] for _ in range(50)]:
        pool = [m for m in data.items if m["tag"] == tag]
        expected.append(pool[rng.integers(len(pool))])
    assert data.draw(np.random.default_rng(7), 50) == expected


@pytest.mark.parametrize(
    ("prediction", "scheduler"),
    [("velocity", "FlowMatchEulerDiscreteScheduler"), ("sample", "DPMSolverMultistepScheduler")],
)
def test_card_names_the_scheduler_the_folder_carries(tmp_path, prediction, scheduler):
    cfg = load_config(
        PretrainConfig,
        None,
        [*TINY, "family=flow", f"flow.prediction={prediction}", f"run_dir={tmp_path / 'run'}", "vae.steps=1",
         "train.steps=1", "log.final_images_per_prompt=1"],
    )
    model = run_pretrain(cfg, Console(quiet=True))
    carried = json.loads((model / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert carried == scheduler
    sampler_lines = [ln for ln in (model / "README.md").read_text().splitlines() if ln.startswith("- scheduler:")]
    assert sampler_lines and f"`{scheduler}`" in sampler_lines[0]


def test_card_scores_the_float16_folder_exactly_as_visalign_sample_draws_it(tmp_path, monkeypatch):
    """The card's images are the exported folder's, bit for bit, not those of the float32 weights in memory."""
    import numpy as np
    from PIL import Image

    from visalign.cli import main
    from visalign.pretrain import finalize

    carded: list[np.ndarray] = []

    def recording(pipe, cfg, images_per_prompt, seed=0):
        evaluation = final_evaluation(pipe, cfg, images_per_prompt, seed)
        carded.append(evaluation["images"])
        return evaluation

    final_evaluation = finalize.final_evaluation
    monkeypatch.setattr(finalize, "final_evaluation", recording)
    cfg = load_config(
        PretrainConfig, None,
        [*TINY, "family=flow", f"run_dir={tmp_path / 'run'}", "vae.steps=2", "train.steps=3",
         "log.final_images_per_prompt=1", "export.half=true"],
    )  # fmt: skip
    model = run_pretrain(cfg, Console(quiet=True))
    assert main(["sample", "--model", str(model), "--split", "test", "--images-per-prompt", "1", "--seed", "0",
                 "--out", str(tmp_path / "redraw")]) == 0  # fmt: skip
    redrawn = np.stack([np.asarray(Image.open(f)) for f in sorted((tmp_path / "redraw").glob("*/samples/0000.png"))])
    assert len(carded) == 1 and carded[0].shape == redrawn.shape
    np.testing.assert_array_equal(carded[0], redrawn)
