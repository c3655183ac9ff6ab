"""experiments/self_training.py runs both data sources and both loss spaces through the engine's regression."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark_scripts import load_experiment
from visalign.pretrain.build import FlowSpec, build_flow_pipeline

script = load_experiment("self_training")


@pytest.mark.parametrize(("data", "space"), [("renders", "native"), ("own", "velocity")])
def test_self_training_steps_and_scores(tmp_path, data, space):
    torch.set_num_threads(1)
    folder = tmp_path / "tiny"
    pipe = build_flow_pipeline(FlowSpec(prediction="sample"), seed=0)
    pipe.save_pretrained(folder)
    out = script.main(["--model", str(folder), "--data", data, "--space", space, "--steps", "2", "--batch", "2",
                       "--eval-every", "2", "--images-per-prompt", "1"])  # fmt: skip
    rows = out["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows[1:])
    assert 0.0 <= rows[0]["eval"] <= 1.0 and 0.0 <= rows[2]["eval"] <= 1.0
