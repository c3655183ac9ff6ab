"""experiments/x0_trajectory.py: its sampler loop ends where the stock diffusers pipeline ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark_scripts import load_experiment
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline

script = load_experiment("x0_trajectory")


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_final_frame_is_the_stock_pipeline_sample(tmp_path, family):
    pipe = build_flow_pipeline(seed=1) if family == "flow" else build_diffusion_pipeline(seed=1)
    pipe.save_pretrained(tmp_path)
    prompts = ["a red circle", "two blue squares"]
    frames = script.trajectory(str(tmp_path), prompts, steps=3, seed=5)
    assert len(frames) == 4 and all(f.shape == (2, 64, 64, 3) for f in frames)

    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    extra = {"max_sequence_length": 0} if family == "flow" else {"eta": 0.0}
    stock = pipe(prompts, latents=noise, num_inference_steps=3, guidance_scale=1.0, output_type="np", **extra)
    expected = (np.clip(stock.images, 0, 1) * 255).round()
    assert np.abs(frames[-1].astype(float) - expected).max() <= 1.0  # uint8 rounding only
    image = script.grid(frames, scale=1, gap=2)
    assert image.size == (4 * 64 + 3 * 2, 2 * 64)


def test_a_missing_model_folder_is_one_line_and_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    from benchmark_scripts import EXPERIMENTS

    missing = tmp_path / "no-such-model"
    run = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "x0_trajectory.py"), str(missing), "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 2
    assert f"error: {missing}: no such model folder" in run.stderr
    assert "Traceback" not in run.stderr
