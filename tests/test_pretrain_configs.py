"""Every shipped pretraining config validates, and the ones that claim to share an autoencoder do."""

from pathlib import Path

import pytest

from visalign.config_io import load_config
from visalign.pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_pretrain_config_validates(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.family in ("flow", "diffusion")
    assert cfg.train.steps > 0 and cfg.vae.steps > 0


def test_flow_x0_trains_the_autoencoder_of_the_diffusion_recipe():
    # docs/models.md: flow_x0.yaml reuses shapes-diffusion's autoencoder recipe, so stage 1 gives the same weights
    flow_x0 = load_config(PretrainConfig, CONFIGS / "flow_x0.yaml")
    diffusion = load_config(PretrainConfig, CONFIGS / "diffusion.yaml")
    assert flow_x0.vae == diffusion.vae and flow_x0.seed == diffusion.seed
    assert flow_x0.image_size == diffusion.image_size
    assert flow_x0.flow.prediction == "sample" and flow_x0.vae.latent_noise == 0.25
