"""Two CPU processes (gloo, torchrun) compute the same training run as one process on the same global batch.

Adam divides by sqrt(v) + eps, which maps a gradient entry of 1e-12 and one of -1e-12 to updates of opposite
sign: summation-order roundoff between 1 and 2 processes would be amplified to lr-sized differences. The test
uses a large eps, so that updates are linear in the gradients and the comparison is about the gradients.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    from visalign.config import load_train_config
    from visalign.pretrain.build import build_flow_pipeline
    from visalign.rewards.base import Reward
    from visalign.trainer import Trainer

    class Brightness(Reward):
        name = "brightness"
        def score(self, images, prompts, metadata):
            return {"brightness": images.mean(dim=(1, 2, 3))}

    run_dir, out = sys.argv[1], sys.argv[2]
    cfg = load_train_config(None, [f"run_dir={run_dir}", "eval.enabled=false", "log.progress=false",
        "data.prompts_per_iter=4", "data.group_size=4", "sampling.num_steps=4", "checkpoint.every=0",
        "model.max_sequence_length=0", "train.iterations=3", "train.inner_epochs=2", "train.lr=1.0",
        "train.adam_eps=1e-2",
        "advantage.std=global", "sampling.train_steps=2"])
    tr = Trainer(cfg, pipeline=("flow", build_flow_pipeline(seed=0)), rewards=[(Brightness(), 1.0)])
    tr.generator.decode = lambda z: torch.sigmoid(F.interpolate(z[:, :3].float(), scale_factor=4))
    summary = tr.run()
    if tr.is_main:
        torch.save(tr.generator.trainable_state_dict(), out)
    tr.close()
    """
)


@pytest.mark.timeout(180)
def test_two_processes_agree_with_one(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    multi = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=29533", str(script), str(tmp_path / "multi"),
         str(tmp_path / "multi.pt")],
        env=env, capture_output=True, text=True, timeout=170,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), str(tmp_path / "single.pt")],
                            env=env, capture_output=True, text=True, timeout=170)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = torch.load(tmp_path / "multi.pt"), torch.load(tmp_path / "single.pt")
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in b.items() if "lora_B" in k)
    assert moved > 1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    rows_m = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    rows_s = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    import json

    for rm, rs in zip(rows_m, rows_s, strict=True):
        rm, rs = json.loads(rm), json.loads(rs)
        assert rm["reward/mean"] == pytest.approx(rs["reward/mean"], abs=1e-6)
        assert rm["adv/std"] == pytest.approx(rs["adv/std"], abs=1e-5)
