"""Export: the trained LoRA, loaded by the stock diffusers pipeline, reproduces the trained model's deterministic
samples; so does the merged pipeline written with save_pretrained."""

from __future__ import annotations

import json

import pytest
import torch

from visalign.cli import main
from visalign.export import restore_generator
from visalign.models.loading import load_pipeline
from visalign.pretrain.build import DiffusionSpec, FlowSpec, build_diffusion_pipeline, build_flow_pipeline
from visalign.rewards.base import Reward
from visalign.sampling.samplers import sample_deterministic
from visalign.trainer import Trainer

torch.set_num_threads(1)
PROMPTS = ["a red circle", "two blue squares"]


class Contrast(Reward):
    name = "contrast"

    def score(self, images, prompts, metadata):
        return {"contrast": images.std(dim=(1, 2, 3))}


@pytest.mark.parametrize("family,prediction", [("flow", "velocity"), ("diffusion", "epsilon"),
                                               ("flow", "sample"), ("diffusion", "sample")])
def test_exported_lora_and_merged_reproduce_samples(tmp_path, family, prediction):
    """Also for x0-predicting ("sample") denoisers: the adapter's kernels and the stock scheduler
    (DPMSolverMultistepScheduler over flow sigmas / DDIMScheduler) take the same steps."""
    base = tmp_path / "base"
    if family == "flow":
        pipe = build_flow_pipeline(FlowSpec(prediction=prediction), seed=0)
    else:
        pipe = build_diffusion_pipeline(DiffusionSpec(prediction_type=prediction), seed=0)
    pipe.save_pretrained(base)
    (base / "visalign.json").write_text(json.dumps({"sampler": {"max_sequence_length": 0}}))
    from visalign.config import load_train_config

    extra = [] if family == "flow" else ["algorithm.name=ddpo", "sampling.kernel=ddim", "sampling.noise_level=1.0"]
    cfg = load_train_config(None, [f"model.name={base}", f"run_dir={tmp_path / 'run'}", "eval.enabled=false",
                                   "log.progress=false", "data.prompts_per_iter=2", "data.group_size=2",
                                   "sampling.num_steps=3", "train.iterations=2", "train.lr=5e-2",
                                   "finetune.lora_rank=4", "finetune.lora_alpha=8", *extra])
    Trainer(cfg, rewards=[(Contrast(), 1.0)]).run()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "lora")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--merged"]) == 0

    _, gen = restore_generator(tmp_path / "run")
    steps = 4
    schedule = gen.schedule(steps)
    kernel = gen.make_kernel("ode" if family == "flow" else "ddim", 0.0, schedule)
    seeds = [11, 12]
    with torch.no_grad():
        trained = sample_deterministic(gen, schedule, kernel, PROMPTS, seeds)
        latents = gen.init_noise([torch.Generator().manual_seed(s) for s in seeds])
    kwargs = {"max_sequence_length": 0} if family == "flow" else {}

    def stock(p):
        with torch.no_grad():
            return p(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=1.0, latents=latents.clone(),
                     output_type="pt", **kwargs).images

    _, plain = load_pipeline(base)
    before = stock(plain)
    plain.load_lora_weights(str(tmp_path / "lora"))
    with_lora = stock(plain)
    _, merged = load_pipeline(tmp_path / "merged")
    from_merged = stock(merged)
    gap = (before - trained).abs().max().item()
    assert gap > 1e-4  # training changed the samples
    assert (with_lora - trained).abs().max().item() < gap / 100
    assert (from_merged - trained).abs().max().item() < gap / 100
