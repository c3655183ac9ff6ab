"""load_pipeline: save/load round trips for both families, fp16 storage, and clear errors for bad folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from visalign.errors import UserError
from visalign.models.loading import load_pipeline, sampler_defaults
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.pretrain.export import save_pipeline

PROMPTS = ["a photo of a red circle", "two blue squares"]


def _images(pipe, family: str) -> np.ndarray:
    extra = {"max_sequence_length": 0} if family == "flow" else {}
    gen = torch.Generator().manual_seed(0)
    out = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, generator=gen, output_type="np", **extra)
    return out.images


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    pipes = {"flow": build_flow_pipeline(seed=1), "diffusion": build_diffusion_pipeline(seed=1)}
    for family, pipe in pipes.items():
        save_pipeline(pipe, root / family, sampler={"num_inference_steps": 3, "guidance_scale": 2.0})
        save_pipeline(pipe, root / f"{family}16", half=True)
    return root, pipes


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_round_trip_is_exact(saved, family):
    root, pipes = saved
    loaded_family, loaded = load_pipeline(root / family)
    assert loaded_family == family
    original = pipes[family].components
    for name, module in loaded.components.items():
        if isinstance(module, torch.nn.Module):
            ref = original[name].state_dict()
            got = module.state_dict()
            assert ref.keys() == got.keys(), name
            assert all(torch.equal(ref[k], got[k]) for k in ref), name
    assert loaded.tokenizer("a red star").input_ids == pipes[family].tokenizer("a red star").input_ids
    np.testing.assert_array_equal(_images(pipes[family], family), _images(loaded, family))
    assert sampler_defaults(root / family) == {"num_inference_steps": 3, "guidance_scale": 2.0}


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_saved_tokenizer_files_do_not_depend_on_earlier_calls(saved, tmp_path, family):
    # a call leaves padding / truncation on the fast backend; files written after it equal those written before
    root, pipes = saved
    _images(pipes[family], family)
    save_pipeline(pipes[family], tmp_path / "after_call", sampler={"num_inference_steps": 3, "guidance_scale": 2.0})
    for file in sorted((root / family).glob("tokenizer*/*")):
        after = tmp_path / "after_call" / file.relative_to(root / family)
        assert after.read_bytes() == file.read_bytes(), file.name
    saved_json = json.loads((tmp_path / "after_call" / "tokenizer" / "tokenizer.json").read_text())
    assert saved_json["truncation"] is None and saved_json["padding"] is None


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_fp16_storage_loads_in_fp32(saved, family):
    root, pipes = saved
    _, loaded = load_pipeline(root / f"{family}16", torch_dtype=torch.float32)
    assert loaded.vae.dtype == torch.float32 and loaded.text_encoder.dtype == torch.float32
    net = loaded.transformer if family == "flow" else loaded.unet
    assert net.dtype == torch.float32
    stored = next(iter(json.loads((root / f"{family}16" / "model_index.json").read_text())))
    assert stored == "_class_name"
    diff = np.abs(_images(pipes[family], family) - _images(loaded, family)).max()
    assert diff < 0.02


@pytest.mark.parametrize(
    ("family", "remove", "message"),
    [
        ("flow", "transformer", "transformer"),
        ("flow", "tokenizer_2/tokenizer.json", "tokenizer_2"),
        ("flow", "vae/diffusion_pytorch_model.safetensors", "weights for component 'vae'"),
        ("diffusion", "unet/config.json", "config.json for component 'unet'"),
        ("diffusion", "scheduler", "scheduler"),
        ("diffusion", "model_index.json", "model_index.json"),
    ],
)
def test_incomplete_folder_names_the_missing_part(saved, tmp_path, family, remove, message):
    root, _ = saved
    folder = tmp_path / "m"
    shutil.copytree(root / family, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=message.replace("'", ".")):
        load_pipeline(folder)


def test_unknown_alias_and_class(saved, tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_pipeline(tmp_path / "nothing-here")
    folder = tmp_path / "m"
    shutil.copytree(saved[0] / "diffusion", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="KandinskyPipeline"):
        load_pipeline(folder)


@pytest.mark.parametrize(("alias", "family"), [("shapes-flow", "flow"), ("shapes-diffusion", "diffusion")])
def test_shipped_models_load_in_fp32(alias, family):
    from visalign.models.loading import ASSETS_DIR

    if not (ASSETS_DIR / alias / "model_index.json").is_file():
        pytest.skip(f"{alias} is not shipped in this checkout")
    got_family, pipe = load_pipeline(alias)
    assert got_family == family
    assert all(p.dtype == torch.float32 for p in pipe.vae.parameters())
    defaults = sampler_defaults(alias)
    assert defaults["num_inference_steps"] > 0 and "guidance_scale" in defaults
    assert (ASSETS_DIR / alias / "README.md").is_file()


def test_shipped_models_fit_the_size_budget():
    from visalign.models.loading import ASSETS_DIR

    folders = [ASSETS_DIR / "shapes-flow", ASSETS_DIR / "shapes-diffusion"]
    total = sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024
