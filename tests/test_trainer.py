"""The training loop end to end on tiny models: reward rises, exact resume, clear errors on bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine_fixtures import Brightness, linear_decode
from engine_fixtures import tiny_trainer as _trainer
from visalign.config import load_train_config
from visalign.errors import UserError
from visalign.pretrain.build import build_flow_pipeline
from visalign.rewards.base import Reward, RewardError
from visalign.trainer import Trainer

torch.set_num_threads(1)
TIMING = ("time/", "images_per_s")


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_brightness_rises_on_a_tiny_flow_model(tmp_path):
    tr = _trainer(tmp_path, ["train.iterations=16", "data.prompts_per_iter=4", "train.lr=1e-2",
                             "train.minibatch_size=8", "train.inner_epochs=2", "algorithm.options.clip_range=0.1"])
    tr.generator.decode = linear_decode
    tr.run()
    rows = _rows(tmp_path / "run")
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > first + 0.03, (first, last)
    # the invariant, as logged: the first inner step of every iteration replays the rollout exactly
    assert max(r["first_step_log_ratio"] for r in rows) < 1e-5
    # later inner steps see a moved policy
    assert max(r["ratio/max"] for r in rows) > 1.0
    for key in ("reward/std", "adv/zero_var_frac", "clip_frac", "grad_norm", "lr", "time/rollout", "time/train",
                "images_per_s", "ratio/min"):
        assert key in rows[-1], key
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and (tmp_path / "run" / "report.html").is_file()


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_resume_reproduces_an_uninterrupted_run_bitwise(tmp_path, family):
    common = ["train.iterations=6", "train.minibatch_size=4", "train.inner_epochs=2", "train.ema.enabled=true",
              "train.lr_schedule=cosine", "train.lr=3e-3", "sampling.train_steps=2"]
    straight = _trainer(tmp_path, common, family, name="straight")
    straight.generator.decode = linear_decode
    straight.run()
    first = _trainer(tmp_path, [*common, "stop_after=3"], family, name="split")
    first.generator.decode = linear_decode
    summary = first.run()
    assert summary["iterations_done"] == 3 and not summary["finished"]
    second = _trainer(tmp_path, [*common, "resume=auto"], family, name="split")
    second.generator.decode = linear_decode
    second.run()
    a, b = straight.generator.trainable_state_dict(), second.generator.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = straight.ema.state_dict(), second.ema.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert _strip(_rows(tmp_path / "straight")) == _strip(_rows(tmp_path / "split"))
    # the run moved: weights differ from the initial (zero) LoRA B matrices
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


class NaNReward(Reward):
    name = "broken_nan"

    def score(self, images, prompts, metadata):
        out = images.mean(dim=(1, 2, 3))
        out[1] = float("nan")
        return {"broken_nan": out}


class ShapeReward(Reward):
    name = "broken_shape"

    def __call__(self, images, prompts, metadata=None):  # bypasses the base-class check on purpose
        return {"broken_shape": torch.zeros(len(prompts) + 1)}


@pytest.mark.parametrize("reward, message", [(NaNReward(), "reward 'broken_nan'.*NaN"),
                                             (ShapeReward(), "reward 'broken_shape'.*shape")])
def test_bad_reward_raises_naming_it(tmp_path, reward, message):
    tr = _trainer(tmp_path, ["train.iterations=1"], reward=reward)
    with pytest.raises(RewardError, match=message):
        tr.run()


def test_bad_prompt_files_and_model_folder(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no prompts"):
        _trainer(tmp_path, [f"data.train={empty}"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a circle"}\n{"prompt": \n')
    with pytest.raises(UserError, match="bad.jsonl:2: malformed JSON"):
        _trainer(tmp_path, [f"data.train={bad}"])
    noprompt = tmp_path / "noprompt.jsonl"
    noprompt.write_text('{"text": "a circle"}\n')
    with pytest.raises(UserError, match="noprompt.jsonl:1: .*prompt"):
        _trainer(tmp_path, [f"data.train={noprompt}"])
    with pytest.raises(UserError, match="prompt file not found"):
        _trainer(tmp_path, [f"data.train={tmp_path / 'missing.jsonl'}"])
    cfg = load_train_config(None, [f"model.name={tmp_path / 'no_model'}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(UserError, match="no_model: no such model folder"):
        Trainer(cfg)


def test_corrupted_or_incompatible_checkpoint_on_resume(tmp_path):
    tr = _trainer(tmp_path, ["train.iterations=2", "stop_after=1"])
    tr.run()
    ckpt = tmp_path / "run" / "checkpoints" / "iter_000001"
    # incompatible: a different LoRA rank
    with pytest.raises(UserError, match="incompatible checkpoint: 'trainable'"):
        _trainer(tmp_path, ["train.iterations=2", "resume=auto", "finetune.lora_rank=2"]).run()
    # corrupted
    state = ckpt / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupted checkpoint"):
        _trainer(tmp_path, ["train.iterations=2", "resume=auto"]).run()
    # no silent fresh start over an existing run
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    with pytest.raises(UserError, match="already holds a run"):
        _trainer(tmp_path, ["train.iterations=2"]).run()


def test_config_unknown_key_names_the_closest():
    with pytest.raises(UserError, match=r"unknown key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        load_train_config(None, ["train.lrr=1"])
    with pytest.raises(UserError, match="sampling.train_window"):
        load_train_config(None, ["sampling.train_window=[3, 99]"])


def test_a_new_algorithm_is_one_class_and_one_registry_line(tmp_path):
    """An algorithm that trains on final samples only (reward-weighted flow matching) runs through the same loop."""
    from visalign.algorithms import register_algorithm, registered_algorithms
    from visalign.algorithms.base import Algorithm
    from visalign.algorithms.common import flow_matching_loss, masked_mean
    from visalign.config_io import StrictModel

    if "test_weighted_fm" not in registered_algorithms():

        @register_algorithm("test_weighted_fm")
        class WeightedFM(Algorithm):
            needs = frozenset({"final"})
            families = ("flow",)

            class Options(StrictModel):
                temperature: float = 1.0

            def loss(self, batch, generator):
                g = torch.Generator().manual_seed(int(batch.seeds[0]) % 2**31)
                x0 = batch.final_latents
                noise = torch.randn(x0.shape, generator=g)
                sigma = torch.rand(x0.shape[0], generator=g)
                s = sigma.view(-1, 1, 1, 1)
                v = generator.predict((1 - s) * x0 + s * noise, sigma * 1000, batch.cond)
                w = torch.exp(batch.advantages / self.options.temperature)
                loss = masked_mean(flow_matching_loss(v, x0, noise, w), batch.mask)
                return loss, {"loss": float(loss.detach())}

    tr = _trainer(tmp_path, ["train.iterations=2", "algorithm.name=test_weighted_fm", "sampling.kernel=ode",
                             "train.lr=1e-2"])
    tr.generator.decode = linear_decode
    tr.run()
    rows = _rows(tmp_path / "run")
    assert tr.algorithm.context.rewards and len(rows) == 2 and rows[-1]["updates"] >= 1
    assert any(v.abs().sum() > 0 for k, v in tr.generator.trainable_state_dict().items() if "lora_B" in k)


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from visalign.report.metrics import MetricsLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(UserError, match="log.wandb=true needs the wandb package"):
        MetricsLogger(tmp_path, wandb=True)


def test_time_budget_stops_early_then_evaluates(tmp_path):
    tr = _trainer(tmp_path, ["train.iterations=50", "train.time_budget_min=0.0001"])
    summary = tr.run()
    assert summary["stopped_by_time_budget"] and summary["iterations_done"] == 1 and summary["finished"]
    assert (tmp_path / "run" / "checkpoints" / "iter_000001").is_dir()


def test_lora_initialisation_is_seeded_by_the_run(tmp_path):
    cfg = load_train_config(None, [f"run_dir={tmp_path}", "model.max_sequence_length=0", "seed=7"])
    states = []
    for outside in (1, 2):  # whatever the global RNG state before the run
        pipe = build_flow_pipeline(seed=0)
        torch.manual_seed(outside)
        states.append(Trainer(cfg, pipeline=("flow", pipe), rewards=[(Brightness(), 1.0)]).generator
                      .trainable_state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_balance_by_tag_repeats_each_tag_to_the_largest_count():
    from visalign.prompts import balance_by_tag

    items = [{"prompt": f"a{i}", "tag": "a"} for i in range(5)] + [{"prompt": "b0", "tag": "b"},
                                                                   {"prompt": "b1", "tag": "b"}]
    out = balance_by_tag(items)
    assert [m["prompt"] for m in out] == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b0", "b1", "b0"]
    untagged = [{"prompt": "x"}, {"prompt": "y"}]
    assert balance_by_tag(untagged) == untagged


def test_a_second_split_is_scored_before_and_after_and_iid_prompts_stay_out_of_training(tmp_path):
    """The anchors' protocol: train without the i.i.d. split's prompts, score it as data.test, and the
    compositional split beside it (eval.second_split) at the base and at the end."""
    from visalign.worlds.shapes.prompts import load_split

    tr = _trainer(tmp_path, ["train.iterations=2", "eval.enabled=true", "eval.every=0", "eval.num_steps=2",
                             "eval.max_prompts=3", "data.test=iid", "eval.second_split=test", "data.exclude=[iid]"])
    iid = {md["prompt"] for md in load_split("iid")}
    assert not iid & {item["prompt"] for item in tr.train_items}
    assert len(tr.train_items) == len(load_split("train")) - len(iid)
    summary = tr.run()
    second = summary["second_split"]
    assert second["split"] == "test" and second["base"] is not None and second["final"] is not None
    assert second["improvement"] == pytest.approx(second["final"]["overall"] - second["base"]["overall"])
    for it in (0, 2):
        results = json.loads((tmp_path / "run" / "evals" / f"iter_{it:04d}" / "second" / "results.json").read_text())
        assert results["overall"] == second["base" if it == 0 else "final"]["overall"]
        assert {img["prompt"] for img in results["images"]} <= {md["prompt"] for md in load_split("test")}
    first = json.loads((tmp_path / "run" / "evals" / "iter_0000" / "results.json").read_text())
    assert {img["prompt"] for img in first["images"]} <= iid
