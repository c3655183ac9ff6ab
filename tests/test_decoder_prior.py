"""experiments/decoder_prior.py: the corruptions by hand, and a fine-tune that touches the decoder only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from benchmark_scripts import load_experiment
from visalign.pretrain.build import build_flow_pipeline

script = load_experiment("decoder_prior")


def test_gauss_adds_level_times_the_batch_std_of_noise():
    z = torch.arange(24.0).reshape(2, 3, 2, 2)
    out = script.corrupt(z, "gauss", 0.5, torch.Generator().manual_seed(3))
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, z + 0.5 * z.std() * noise)
    assert torch.equal(script.corrupt(z, "gauss", 0.0, torch.Generator()), z)


def test_blur_mixes_the_latent_with_its_two_pixel_average():
    z = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # one 2x2 channel: its average is 4 everywhere
    gen = torch.Generator().manual_seed(0)
    torch.randn(z.shape, generator=gen)  # the noise draw comes first
    lam = torch.rand(1, generator=gen).item()
    out = script.corrupt(z, "blur", 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(out, lam * z + (1 - lam) * 4.0)
    with pytest.raises(ValueError, match="unknown corruption 'sharp'"):
        script.corrupt(z, "sharp", 0.0, gen)


def test_finetune_changes_the_decoder_and_nothing_else(tmp_path):
    build_flow_pipeline(seed=1).save_pretrained(tmp_path / "base")
    out = script.finetune_decoder(str(tmp_path / "base"), tmp_path / "prior", "blur", 0.5, steps=2, batch_size=4)
    before = load_file(tmp_path / "base" / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k].float(), after[k].float())}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in changed)
    transformer = "transformer/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "base" / transformer).read_bytes() == (out / transformer).read_bytes()
