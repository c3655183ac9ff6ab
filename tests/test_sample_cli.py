"""`visalign sample`: the pipeline itself and the CLI give the same images; GenEval layout that eval scores."""

from __future__ import annotations

import importlib.util  # noqa: F401  (visalign.cli resolves subcommands with importlib.util)
import json

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.cli import main
from visalign.eval.shapesbench import score_folder
from visalign.models.loading import load_pipeline
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.pretrain.export import save_pipeline
from visalign.pretrain.generate import image_seed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_models")
    save_pipeline(
        build_flow_pipeline(seed=2),
        root / "flow",
        sampler={"num_inference_steps": 3, "guidance_scale": 2.0, "max_sequence_length": 0},
    )
    save_pipeline(build_diffusion_pipeline(seed=2), root / "diffusion", half=True)
    return root


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_cli_matches_pipeline(models, tmp_path, family):
    out = tmp_path / "out"
    args = ["sample", "--model", str(models / family), "--prompts", str(tmp_path / "p.txt")]
    (tmp_path / "p.txt").write_text("a photo of a red circle\n\ntwo blue squares\n")
    args += ["--images-per-prompt", "3", "--seed", "7", "--out", str(out), "--batch-size", "4"]
    if family == "diffusion":  # no visalign.json: sampler given on the command line
        args += ["--steps", "3", "--guidance", "2.0"]
    assert main(args) == 0
    _, pipe = load_pipeline(models / family)
    extra = {"max_sequence_length": 0} if family == "flow" else {}
    for p, prompt in enumerate(["a photo of a red circle", "two blue squares"]):
        meta = json.loads((out / f"{p:05d}" / "metadata.jsonl").read_text())
        assert meta == {"prompt": prompt}
        gens = [torch.Generator().manual_seed(image_seed(7, p, k)) for k in range(3)]
        ref = pipe(
            [prompt] * 3,
            num_inference_steps=3,
            guidance_scale=2.0,
            generator=gens,
            output_type="pil",
            **extra,
        )
        for k in range(3):
            got = np.asarray(Image.open(out / f"{p:05d}" / "samples" / f"{k:04d}.png").convert("RGB"))
            np.testing.assert_array_equal(np.asarray(ref.images[k]), got)  # same batch: bit-identical
        # one image alone: the same image up to float rounding of a different batch size
        gen = torch.Generator().manual_seed(image_seed(7, p, 2))
        alone = pipe(
            prompt, num_inference_steps=3, guidance_scale=2.0, generator=gen, output_type="np", **extra
        )
        diff = np.abs(alone.images[0] * 255 - got.astype(np.float64))
        assert diff.max() <= 1.0
    info = json.loads((out / "sample_info.json").read_text())
    assert info["sampler"]["steps"] == 3 and info["family"] == family


def test_split_folder_is_scored_by_eval(models, tmp_path):
    out = tmp_path / "split"
    args = ["sample", "--model", str(models / "flow"), "--split", "test", "--images-per-prompt", "1"]
    assert main(args + ["--steps", "1", "--out", str(out)]) == 0
    results = score_folder(out, write=False)
    assert len(results["images"]) == len(list(out.glob("[0-9]*")))
    assert 0.0 <= results["overall"] <= 1.0


def test_missing_component_is_a_clear_cli_error(models, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models / "diffusion", broken)
    shutil.rmtree(broken / "text_encoder")
    code = main(["sample", "--model", str(broken), "--prompt", "a star", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "text_encoder" in capsys.readouterr().err


def test_cli_drops_only_the_torchvision_fallback_notice():
    """The CLI's filter drops transformers' 'requires torchvision' notice and nothing else from that logger."""
    import logging

    from visalign.cli import _NoTorchvisionNotice

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.utils.import_utils", logging.WARNING, __file__, 0, message, None, None)

    notice = "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
    assert not _NoTorchvisionNotice().filter(record(notice))
    assert _NoTorchvisionNotice().filter(record("`Foo` requires a newer transformers"))
