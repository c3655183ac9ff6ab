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


def test_a_bad_override_is_blamed_not_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("optim:\n  lr: 0.5\n")
    with pytest.raises(UserError) as err:
        load_config(Demo, path, ["optim.lr=abc"])
    assert str(err.value).startswith("override 'optim.lr=abc': invalid value for 'optim.lr'")
    assert "recipe.yaml" not in str(err.value)
    with pytest.raises(UserError, match=r"^override 'optim.lrr=1': unknown key 'optim.lrr' \(did you mean"):
        load_config(Demo, path, ["optim.lrr=1"])
    with pytest.raises(UserError, match=r"^override 'optim=3': invalid value for 'optim'"):  # a section replaced
        load_config(Demo, path, ["optim=3"])
    path.write_text("optim:\n  lr: abc\n")  # the file's own mistake still names the file
    with pytest.raises(UserError, match=r"recipe.yaml: invalid value for 'optim.lr'"):
        load_config(Demo, path, ["seed=2"])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_floats_are_rejected(value):
    with pytest.raises(UserError, match=rf"override 'optim.lr={value}': invalid value for 'optim.lr': .*finite"):
        load_config(Demo, None, [f"optim.lr={value}"])
    with pytest.raises(UserError, match="finite"):  # inside lists too
        load_config(Demo, None, [f"optim.betas=[0.9, {value}]"])


class Item(StrictModel):
    name: str = "a"
    weight: float = 1.0


class Listy(StrictModel):
    items: list[Item] = [Item()]


def test_overrides_index_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("items:\n  - name: x\n  - name: y\n")
    cfg = load_config(Listy, path, ["items.1.weight=2.5"])
    assert cfg.items[1].weight == 2.5 and cfg.items[0].weight == 1.0
    with pytest.raises(UserError, match=r"override 'items.5.weight=1': '5' is not an index of a list of 2 items"):
        load_config(Listy, path, ["items.5.weight=1"])
    with pytest.raises(UserError, match=r"^override 'items.0.wieght=1': unknown key 'items.0.wieght' "
                                        r"\(did you mean 'items.0.weight'\?\)"):
        load_config(Listy, path, ["items.0.wieght=1"])
    with pytest.raises(UserError, match="is not a dotted key"):
        load_config(Listy, path, ["items..name=1"])


def test_unreadable_config_files_are_one_line_errors(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.yaml: not a UTF-8 text file"):
        load_config(Demo, path)
    (tmp_path / "list.yaml").write_text("- seed\n- 1\n")
    with pytest.raises(UserError, match="list.yaml: top level must be a mapping"):
        load_config(Demo, tmp_path / "list.yaml")


class Checked(StrictModel):
    """A section with a semantic check: its problems are blamed on the file or the override, like type errors."""

    path: str = "ok"

    def semantic_problems(self):
        if self.path != "ok":
            yield "path", f"{self.path}: no such thing"


def test_semantic_problems_name_the_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("path: nope\n")
    with pytest.raises(UserError, match=r"c.yaml \[path\]: nope: no such thing$"):
        load_config(Checked, path)
    with pytest.raises(UserError, match=r"^override 'path=bad': bad: no such thing$"):
        load_config(Checked, path, ["path=bad"])
