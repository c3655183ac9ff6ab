"""Config loading: unknown keys name the closest valid key; overrides are typed; bad YAML names the line."""

from __future__ import annotations

import pytest

from visalign.config_io import StrictModel, dump_config, load_config
from visalign.errors import UserError


class Optim(StrictModel):
    lr: float = 1e-4
    betas: list[float] = [0.9, 0.999]


class Demo(StrictModel):
    seed: int = 0
    optim: Optim = Optim()


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\noptim:\n  lr: 0.5\n")
    cfg = load_config(Demo, path, ["optim.lr=2e-3", "optim.betas=[0.5, 0.6]"])
    assert cfg.seed == 3 and cfg.optim.lr == pytest.approx(2e-3) and cfg.optim.betas == [0.5, 0.6]
    assert "lr: 0.002" in dump_config(cfg)


def test_unknown_nested_key_names_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(UserError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(Demo, path)


def test_bad_value_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="invalid value for 'seed'"):
        load_config(Demo, None, ["seed=abc"])
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\noptim: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: malformed YAML"):
        load_config(Demo, path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(Demo, tmp_path / "missing.yaml")
