"""Every shipped pretraining config validates, and the ones that claim to share an autoencoder do."""

from pathlib import Path

import pytest

from visalign.config_io import load_config
from visalign.pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_pretrain_config_validates(path):
    from visalign.pretrain.vlm.config import VLMPretrainConfig, is_vlm_config

    if is_vlm_config(path):
        vlm = load_config(VLMPretrainConfig, path)
        assert vlm.train.steps > 0 and vlm.log.eval_every > 0
        return
    cfg = load_config(PretrainConfig, path)
    assert cfg.family in ("flow", "diffusion")
    assert cfg.train.steps > 0 and cfg.vae.steps > 0


def test_flow_x0_trains_the_autoencoder_of_the_diffusion_recipe():
    # flow_x0.yaml's vae section is diffusion.yaml's autoencoder recipe and seed, so stage 1 gives the same weights
    flow_x0 = load_config(PretrainConfig, CONFIGS / "flow_x0.yaml")
    diffusion = load_config(PretrainConfig, CONFIGS / "diffusion.yaml")
    assert flow_x0.vae == diffusion.vae and flow_x0.seed == diffusion.seed
    assert flow_x0.image_size == diffusion.image_size
    assert flow_x0.flow.prediction == "sample" and flow_x0.vae.latent_noise == 0.25


@pytest.mark.parametrize(("recipe", "alias"), [("flow.yaml", "shapes-flow"), ("diffusion.yaml", "shapes-diffusion")])
def test_the_recipe_gives_the_spec_its_shipped_folder_records(recipe, alias):
    # visalign.json's "spec", byte for byte (key order included): the recipe still builds the shipped architecture
    import json

    from visalign.models.loading import ASSETS_DIR
    from visalign.pretrain.config import model_spec
    from visalign.pretrain.spec import spec_to_dict

    recorded = json.loads((ASSETS_DIR / alias / "visalign.json").read_text())["spec"]
    spec = spec_to_dict(model_spec(load_config(PretrainConfig, CONFIGS / recipe)))
    assert json.dumps(spec, indent=2) == json.dumps(recorded, indent=2)


def test_each_size_has_one_default_shared_by_the_builders_and_the_config():
    from visalign.pretrain.config import model_spec
    from visalign.pretrain.spec import DiffusionSpec, FlowSpec, spec_to_dict

    cfg = PretrainConfig()
    assert spec_to_dict(model_spec(cfg)) == spec_to_dict(FlowSpec())
    assert spec_to_dict(model_spec(cfg.model_copy(update={"family": "diffusion"}))) == spec_to_dict(DiffusionSpec())
    # YAML files name SD3.5's query / key norm "rms_norm" and its absence "none"
    assert load_config(PretrainConfig, None, ["flow.qk_norm=none"]).flow.qk_norm is None
    assert model_spec(load_config(PretrainConfig, None, ["flow.qk_norm=rms_norm"])).qk_norm == "rms_norm"
