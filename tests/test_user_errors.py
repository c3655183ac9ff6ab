"""User mistakes that used to end in a traceback (or in a run that "worked" on NaN): each is now one line on stderr
that names the file / key / flag at fault, with exit status 2, and fails before any model is loaded where the
mistake can be seen that early. ``test_bad_inputs.py`` drives the same classes with many more inputs."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from visalign.cli import main
from visalign.config import Config, load_train_config
from visalign.config_io import load_config
from visalign.errors import UserError
from visalign.pretrain.config import PretrainConfig
from visalign.rewards.base import RewardError, build_reward, registered_rewards

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["model.max_sequence_length=0", "train.iterations=1", "eval.enabled=false", "log.progress=false",
            "data.prompts_per_iter=2", "data.group_size=2", "sampling.num_steps=2", "checkpoint.every=0",
            "train.threads=1"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from visalign.pretrain.build import build_flow_pipeline

    folder = tmp_path_factory.mktemp("model") / "flow"
    build_flow_pipeline(seed=0).save_pretrained(folder)
    (folder / "visalign.json").write_text(json.dumps({"sampler": {"max_sequence_length": 0}}))
    return folder


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``visalign ARGV`` run in this process (argparse exits through SystemExit)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(rc), err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "torchvision" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


# ---- reward options ---------------------------------------------------------------------------------------------


def test_recipe_reward_option_typo_names_the_file_key_and_reward(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rewards:\n  - name: shapes_soft\n    options: {foo: 1}\n")
    rc, err = _cli(["train", "--config", str(recipe), f"run_dir={tmp_path / 'run'}"], capsys)
    line = _one_line(err)
    assert rc == 2
    assert f"{recipe} [rewards.0.options.foo]: reward 'shapes_soft' has no option 'foo'" in line


@pytest.mark.parametrize(
    ("rewards", "needle"),
    [
        ("[{name: jpeg_compressibility, options: {quality: abc}}]", "option 'quality' must be int, got 'abc'"),
        ("[{name: jpeg_compressibility, options: {quality: 101}}]", "quality must be from 0 to 100"),
        ("[{name: shapes_pairwise, options: {tie_margin: .nan}}]", "option 'tie_margin' must be a finite number"),
        ("[{name: shapes_pairwise, options: {tie_margin: -1}}]", "tie_margin must be >= 0"),
        ("[{name: remote}]", "reward 'remote' needs option 'url'"),
        ("[{name: shapes_soft}, {name: shapes_strcit}]", "unknown reward 'shapes_strcit' (did you mean 'shapes_strict'?)"),
        ("[{name: composite, options: {components: [{name: shapes_soft, kwargs: {foo: 1}}]}}]",
         "reward 'shapes_soft' has no option 'foo'"),
        ("[{name: vlm_pairwise, options: {base_url: 'http://x', model: m, both_order: true}}]",
         "no option 'both_order' (did you mean 'both_orders'?)"),
    ],
)
def test_reward_options_are_checked_when_the_config_loads(rewards, needle):
    with pytest.raises(UserError) as err:
        load_train_config(None, [f"rewards={rewards}"])
    assert needle in str(err.value) and str(err.value).startswith("override 'rewards=")


def test_build_reward_turns_option_and_constructor_errors_into_user_errors(monkeypatch):
    from visalign.rewards import base

    with pytest.raises(UserError, match=r"^reward 'shapes_soft' has no option 'foo' \(options: none\)$"):
        build_reward("shapes_soft", foo=1)
    with pytest.raises(UserError, match=r"^reward 'shapes_pairwise': tie_margin must be >= 0"):
        build_reward("shapes_pairwise", tie_margin=-1)

    class Picky(base.Reward):
        name = "picky"

        def __init__(self, level: int = 1) -> None:
            raise ValueError(f"level {level} is not supported")

    monkeypatch.setitem(base._REGISTRY, "picky", Picky)
    with pytest.raises(UserError, match=r"^reward 'picky': level 3 is not supported$"):
        build_reward("picky", level=3)


def test_serve_reward_rejects_an_unknown_option_on_one_line(capsys):
    rc, err = _cli(["serve-reward", "shapes_soft", "foo=1"], capsys)
    assert rc == 2 and "reward 'shapes_soft' has no option 'foo'" in _one_line(err)
    rc, err = _cli(["serve-reward", "jpeg_compressibility", "quality=abc"], capsys)
    assert rc == 2 and "option 'quality' must be int, got 'abc'" in _one_line(err)


# ---- values that pass the type but not the meaning ----------------------------------------------------------------


@pytest.mark.parametrize("betas", ["[0.9]", "[0.9, 1.0]", "[-0.1, 0.99]", "[0.9, 0.99, 0.9]"])
def test_adam_betas_are_two_values_in_the_unit_interval(betas):
    with pytest.raises(UserError, match=rf"^override '{re.escape(f'train.betas={betas}')}'.*'train.betas'.*two betas"):
        load_train_config(None, [f"train.betas={betas}"])


@pytest.mark.parametrize("override", ["train.lr=.inf", "sampling.guidance_scale=.nan", "eval.guidance_scale=-.inf",
                                      "train.adam_eps=.nan", "advantage.clip=.inf"])  # fmt: skip
def test_non_finite_training_values_are_refused(override, tmp_path, capsys):
    rc, err = _cli(["train", override, f"run_dir={tmp_path / 'run'}"], capsys)
    line = _one_line(err)
    assert rc == 2 and f"override '{override}'" in line and "finite" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_non_finite_reward_weight_in_a_recipe_names_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  - name: shapes_soft\n    weight: .nan\n")
    with pytest.raises(UserError, match=rf"{recipe}: invalid value for 'rewards.0.weight'.*finite"):
        load_train_config(recipe)


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.lr=.nan", "train.lr"), ("sample.guidance=.inf", "sample.guidance"), ("threads=0", "threads"),
     ("image_size=30", "image_size"), ("log.every=0", "log.every"), ("train.ema_decay=1.5", "train.ema_decay"),
     ("vae.batch_size=0", "vae.batch_size"), ("flow.shift=-.inf", "flow.shift")],
)  # fmt: skip
def test_pretrain_config_refuses_non_finite_and_meaningless_values(override, key):
    with pytest.raises(UserError, match=rf"^override '{re.escape(override)}': .*{re.escape(key)}"):
        load_config(PretrainConfig, ROOT / "configs/pretrain/flow.yaml", [override])


def test_model_resolution_must_fit_the_model():
    from visalign.models import build_generator
    from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline

    flow = build_flow_pipeline(seed=0)
    for bad, needle in ((13, "multiples of 8 (VAE factor 4 x patch size 2)"), (72, "at most 64")):
        with pytest.raises(UserError, match=rf"^model.resolution={bad}: .*{re.escape(needle)}"):
            build_generator("flow", flow, max_sequence_length=0, resolution=bad)
    assert build_generator("flow", flow, max_sequence_length=0, resolution=32).latent_shape()[1:] == (8, 8)
    with pytest.raises(UserError, match=r"^model.resolution=30: .*multiples of 4"):
        build_generator("diffusion", build_diffusion_pipeline(seed=0), resolution=30)
    with pytest.raises(UserError, match="model.resolution"):
        load_train_config(None, ["model.resolution=0"])


@pytest.mark.parametrize(
    ("flags", "flag"),
    [(["--steps", "0"], "--steps"), (["--guidance", "nan"], "--guidance"), (["--guidance", "inf"], "--guidance"),
     (["--images-per-prompt", "0"], "--images-per-prompt"), (["--batch-size", "-1"], "--batch-size")],
)  # fmt: skip
def test_sample_refuses_meaningless_flags(flags, flag, tmp_path, capsys):
    rc, err = _cli(["sample", "--model", "shapes-flow", "--prompt", "a cube", "--out", str(tmp_path / "o"), *flags],
                   capsys)  # fmt: skip
    assert rc == 2 and f"argument {flag}:" in _one_line(err)
    assert not (tmp_path / "o").exists()


def test_sample_refuses_an_output_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    rc, err = _cli(["sample", "--model", "shapes-flow", "--prompt", "a cube", "--out", str(taken)], capsys)
    assert rc == 2 and f"argument --out: {taken} exists and is not a folder" in _one_line(err)
    assert taken.read_text() == "x"


def test_argument_types():
    from visalign.commands import _args

    assert _args.port("8000") == 8000 and _args.port("0") == 0
    for bad in ("70000", "-1", "http"):
        with pytest.raises(argparse.ArgumentTypeError, match="port"):
            _args.port(bad)
    for bad in ("nan", "inf", "-inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.finite_float(bad)
    assert _args.positive_int("3") == 3 and _args.fraction("0.2") == 0.2
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        _args.positive_int("0")


# ---- the built-in defaults and the shipped configs ----------------------------------------------------------------


def test_the_defaults_form_a_valid_config():
    cfg = load_train_config(None)
    assert cfg == Config()
    assert {spec.name for spec in cfg.rewards} <= set(registered_rewards())
    assert not list(cfg.semantic_problems())
    assert build_reward(cfg.rewards[0].name).needs_metadata  # the default is the ShapesWorld verifier


RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PRETRAIN = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates_with_registered_rewards_and_algorithms(path):
    from visalign.algorithms import registered_algorithms

    cfg = load_train_config(path)  # semantic problems (reward / algorithm options) included
    assert {spec.name for spec in cfg.rewards} <= set(registered_rewards())
    assert cfg.algorithm.name in registered_algorithms()


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.name)
def test_every_pretrain_config_validates(path):
    from visalign.pretrain.vlm.config import VLMPretrainConfig, is_vlm_config

    if is_vlm_config(path):
        assert load_config(VLMPretrainConfig, path).family == "vlm"
    else:
        assert load_config(PretrainConfig, path).family in ("flow", "diffusion")


def test_shipped_configs_were_found():
    assert len(RECIPES) >= 20 and len(PRETRAIN) >= 2


# ---- prompt files meet rewards ------------------------------------------------------------------------------------


def test_prompts_without_metadata_for_a_shapes_reward_fail_before_the_first_rollout(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "plain.txt"
    prompts.write_text("a red square\na blue circle\n")
    args = ["train", f"model.name={tiny_model}", f"run_dir={tmp_path / 'run'}", *TINY_RUN,
            "rewards=[{name: shapes_strict}]", f"data.train={prompts}"]  # fmt: skip
    rc, err = _cli(args, capsys)
    line = _one_line(err)
    assert rc == 2 and str(prompts) in line and "prompt 1 ('a red square')" in line and "shapes_strict" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_check_metadata_reads_what_each_reward_needs():
    from visalign.rewards.base import check_metadata

    composite = build_reward("composite", components=["jpeg_compressibility", "shapes_soft"])
    assert composite.needs_metadata == ("tag",)
    good = [{"prompt": "a red square", "tag": "colors"}]
    check_metadata([(composite, 1.0)], good, "good.jsonl")
    check_metadata([build_reward("jpeg_compressibility")], [{"prompt": "x"}], "plain.txt")  # needs nothing
    with pytest.raises(UserError, match=r"^plain.txt: prompt 2 \('a cat'\) has no 'tag' metadata.*'composite'"):
        check_metadata([(composite, 1.0)], [*good, {"prompt": "a cat"}], "plain.txt")


def test_non_utf8_prompt_files_are_named(tmp_path, capsys):
    prompts = tmp_path / "latin1.txt"
    prompts.write_bytes("un caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"override 'data.train={prompts}': {prompts}: not a UTF-8 text file"):
        load_train_config(None, [f"data.train={prompts}"])
    rc, err = _cli(["sample", "--model", "shapes-flow", "--prompts", str(prompts), "--out", str(tmp_path / "o")],
                   capsys)  # fmt: skip
    assert rc == 2 and f"{prompts}: not a UTF-8 text file" in _one_line(err)


# ---- messages that blamed the wrong source, or dumped lists -------------------------------------------------------


def test_a_bad_override_is_reported_as_the_override(capsys):
    rc, err = _cli(["train", "--config", str(ROOT / "recipes/flow_grpo_shapes.yaml"), "train.lr=abc"], capsys)
    line = _one_line(err)
    assert rc == 2 and line.startswith("error: override 'train.lr=abc': invalid value for 'train.lr'")
    assert "flow_grpo_shapes.yaml" not in line


def test_an_algorithm_option_typo_names_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("algorithm:\n  name: flow_grpo\n  options:\n    kl_bta: 0.1\n")
    rc, err = _cli(["train", "--config", str(recipe), f"run_dir={tmp_path / 'run'}"], capsys)
    line = _one_line(err)
    assert rc == 2 and f"{recipe}: unknown key 'algorithm.options.kl_bta' (did you mean 'algorithm.options.kl_beta'?)" in line


def test_a_state_dict_mismatch_is_summarised_not_listed(tmp_path):
    from visalign.rewards.aesthetic import AestheticMLP, load_aesthetic_head

    state = AestheticMLP(8).state_dict()
    state.update({f"extra.{i}.weight": torch.zeros(1) for i in range(60)})
    head = tmp_path / "head.pth"
    torch.save(state, head)
    with pytest.raises(UserError) as err:
        load_aesthetic_head("aesthetic", head)
    assert "does not match the aesthetic MLP: Unexpected key(s)" in str(err.value)
    assert len(str(err.value)) < 400 and "extra.59" not in str(err.value)


@pytest.mark.parametrize(
    ("error", "rc"), [(UserError("a.yaml: first\n  second"), 2), (RewardError("reward 'remote': gave up\nafter 3"), 1)]
)
def test_errors_reach_stderr_as_one_line(error, rc, monkeypatch, capsys):
    import visalign.commands.report as report

    def fail(args):
        raise error

    monkeypatch.setattr(report, "run", fail)
    got, err = _cli(["report", "somewhere"], capsys)
    assert got == rc and _one_line(err) == f"error: {' '.join(str(error).split())}"


def test_garbage_model_folders_are_named(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("[1, 2]")
    rc, err = _cli(["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and f"{model / 'model_index.json'}: expected a JSON object" in _one_line(err)
    (model / "model_index.json").write_bytes(b"\xff\xfe{")
    rc, err = _cli(["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "model_index.json: not a UTF-8 JSON file" in _one_line(err)


def test_garbage_sampler_settings_are_named(tiny_model, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for text, needle in (('["steps"]', "visalign.json: expected a JSON object"),
                         ('{"sampler": 3}', "visalign.json [sampler]: expected an object"),
                         ('{"sampler": {"num_inference_steps": 0}}', "[sampler.num_inference_steps]: must be an integer"),
                         ('{"sampler": {"guidance_scale": NaN}}', "[sampler.guidance_scale]: must be a finite number")):  # fmt: skip
        (model / "visalign.json").write_text(text)
        rc, err = _cli(["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "o")], capsys)
        assert rc == 2 and needle in _one_line(err), text


def test_non_finite_scores_name_a_few_positions_not_the_whole_batch():
    from visalign.rewards.base import check_scores

    scores = torch.zeros(300)
    scores[::2] = float("nan")
    with pytest.raises(RewardError, match=r"positions \[0, 2, 4, 6, 8, 10, 12, 14\] and 142 more$"):
        check_scores("r", {"r": scores}, 300)
