"""Diffusion-DPO (sigmoid / hinge / IPO; online and offline) and Diffusion-KTO: losses against hand computations,
the policy = reference invariant, the gradient's direction, pairing, the preference-data loader's errors, and short
end-to-end runs through ``Trainer``."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine_fixtures import Brightness, linear_decode, tiny_generator
from visalign.algorithms import build_algorithm
from visalign.algorithms._preference import PairBatch, best_worst_pairs, dpo_loss, kto_loss
from visalign.algorithms.base import RunContext
from visalign.config import load_train_config
from visalign.errors import UserError
from visalign.models.base import Cond
from visalign.preference_data import (
    load_labelled_images,
    load_preference_pairs,
    make_shapes_pairs,
)
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.rewards.base import Reward
from visalign.rollout import Rollout
from visalign.trainer import Trainer

torch.set_num_threads(1)
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
LOG2 = math.log(2.0)


def _pairs(gen, n: int = 3, seed: int = 0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    shape = gen.latent_shape()
    return PairBatch(x0_w=torch.randn(n, *shape, generator=g), x0_l=torch.randn(n, *shape, generator=g),
                     cond=gen.encode(["a red circle", "two blue squares", "a green star"][:n]),
                     seeds=torch.arange(n, dtype=torch.int64) + 11, weight=torch.full((n,), 1.0 / n))


# ---------------------------------------------------------------------------------------------------------------
# losses by hand


def test_dpo_losses_by_hand():
    d = torch.float64
    mse_w, ref_w = torch.tensor([0.30, 0.50], dtype=d), torch.tensor([0.32, 0.50], dtype=d)
    mse_l, ref_l = torch.tensor([0.50, 0.40], dtype=d), torch.tensor([0.48, 0.50], dtype=d)
    beta = 100.0
    # pair 0: [(0.30 - 0.32) - (0.50 - 0.48)] = -0.04 -> u = 0.02, beta u = 2
    # pair 1: [(0.50 - 0.50) - (0.40 - 0.50)] = +0.10 -> u = -0.05, beta u = -5
    expected = {
        "sigmoid": [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(5.0))],
        "hinge": [0.0, 6.0],
        "ipo": [(0.02 - 1 / 200) ** 2, (-0.05 - 1 / 200) ** 2],
    }
    for kind, values in expected.items():
        loss, u = dpo_loss(mse_w, mse_l, ref_w, ref_l, beta, kind)
        torch.testing.assert_close(loss, torch.tensor(values, dtype=d), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(u, torch.tensor([0.02, -0.05], dtype=d), rtol=1e-9, atol=1e-12)
    # the paper's form: -log sigmoid(-beta/2 [...])
    paper = -F.logsigmoid(-beta / 2 * ((mse_w - ref_w) - (mse_l - ref_l)))
    torch.testing.assert_close(dpo_loss(mse_w, mse_l, ref_w, ref_l, beta)[0], paper)
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        dpo_loss(mse_w, mse_l, ref_w, ref_l, beta, "square")


def test_kto_loss_by_hand():
    d = torch.float64
    mse = torch.tensor([0.2, 0.4, 0.3, 0.9], dtype=d)
    ref = torch.tensor([0.3, 0.42, 0.3, 0.1], dtype=d)
    sign = torch.tensor([1.0, -1.0, 1.0, 0.0], dtype=d)  # the last one is unlabelled
    # g = ref - mse = [0.1, 0.02, 0, (-0.8: unlabelled)]; z0 = mean over labelled = 0.04
    loss, z0 = kto_loss(mse, ref, sign, beta=10.0, lambda_d=1.0, lambda_u=2.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = [1 - sig(10 * 0.06), 2 * (1 - sig(-10 * (0.02 - 0.04))), 1 - sig(10 * (0 - 0.04)), 0.0]
    assert float(z0) == pytest.approx(0.04)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=d), rtol=1e-9, atol=1e-12)
    # a negative KL estimate is clamped to 0: g = [-0.1, -0.3] -> z0 = 0
    loss, z0 = kto_loss(torch.tensor([0.5, 0.6], dtype=d), torch.tensor([0.4, 0.3], dtype=d),
                        torch.tensor([1.0, -1.0], dtype=d), beta=5.0)
    assert float(z0) == 0.0
    torch.testing.assert_close(loss, torch.tensor([1 - sig(-0.5), 1 - sig(1.5)], dtype=d))


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_dpo_loss_is_log2_when_policy_is_reference(family):
    gen = tiny_generator(family)  # LoRA B = 0: the policy is the reference, bit for bit
    batch = _pairs(gen)
    for kind, value in (("sigmoid", LOG2), ("hinge", 1.0), ("ipo", (1 / 2000) ** 2)):
        algo = build_algorithm("diffusion_dpo", {"beta": 1000.0, "loss_type": kind})
        loss, metrics = algo.loss(batch, gen)
        assert metrics["loss"] == pytest.approx(value, rel=1e-6, abs=1e-12)
        assert float(loss.detach()) == pytest.approx(value, rel=1e-6, abs=1e-12)  # weights sum to 1
        assert metrics["dpo/margin"] == 0.0
        assert metrics["mse/winner"] == metrics["mse_ref/winner"]


# IPO's beta is its tau: the gradient at u = 0 is 2 / (2 tau), so it gets a tau whose pull is of the same size
@pytest.mark.parametrize("kind, beta", [("sigmoid", 100.0), ("hinge", 100.0), ("ipo", 0.5)])
def test_a_step_lowers_the_winners_error_relative_to_the_losers(kind, beta):
    gen = tiny_generator("flow")
    batch = _pairs(gen, n=2)
    algo = build_algorithm("diffusion_dpo", {"beta": beta, "loss_type": kind})

    def gap() -> float:
        with torch.no_grad():
            p = len(batch.seeds)
            both = torch.arange(p).repeat(2)
            mse, _ = algo.denoising_errors(gen, torch.cat([batch.x0_w, batch.x0_l]), batch.seeds[both],
                                           batch.cond.select(both))
        return float((mse[:p] - mse[p:]).mean())

    before = gap()
    opt = torch.optim.SGD(gen.trainable_parameters(), lr=1e-2)
    loss, _ = algo.loss(batch, gen)
    loss.backward()
    opt.step()
    after = gap()
    assert after < before - 1e-7, (before, after)


# ---------------------------------------------------------------------------------------------------------------
# pairing


class _Named(Reward):
    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, images, prompts, metadata):  # never called: the scores are given
        raise AssertionError


def test_best_worst_pairs_by_hand():
    reward = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3, 0.3, 0.3, 0.7, 0.2, 0.4])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    winners, losers = best_worst_pairs(reward, groups)
    # group 0: best 0.9 (first of the tie: index 1), worst index 0; group 1 ties throughout: no pair;
    # group 2: 7 over 8; group 3 has one member: no pair
    assert winners.tolist() == [1, 7] and losers.tolist() == [0, 8]


def _rollout(rewards: dict[str, torch.Tensor], groups: torch.Tensor) -> Rollout:
    n = len(groups)
    latents = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 4, 2, 2).contiguous()
    return Rollout(
        prompts=[f"p{int(g)}" for g in groups], metadata=[{} for _ in range(n)], prompt_ids=groups,
        group_ids=groups, seeds=torch.arange(n, dtype=torch.int64) * 10, cond=Cond({"e": torch.arange(n).view(n, 1)}),
        kernel=None, guidance_scale=1.0, final_latents=latents, images=torch.zeros(n, 3, 8, 8),
        step_index=torch.zeros(n, 0, dtype=torch.long), x=torch.zeros(n, 0), x_next=torch.zeros(n, 0),
        c=torch.zeros(n, 0), c_next=torch.zeros(n, 0), t_model=torch.zeros(n, 0), log_prob=torch.zeros(n, 0),
        advantages=torch.zeros(n), mask=torch.ones(n, dtype=torch.bool), rewards=rewards)


def test_online_pairs_use_the_weighted_reward_and_follow_their_winner():
    a = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 0.3, 0.3, 0.3])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.9, 0.1, 0.1, 0.1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    rollout = _rollout({"a": a, "b": b}, groups)
    algo = build_algorithm("diffusion_dpo", {})
    algo.bind(RunContext(rewards=[(_Named("a"), 1.0), (_Named("b"), 2.0)]))
    algo.on_iteration_start(1)
    # weighted: group 0 = [1, 2, 0.5, 0.2] -> winner 1, loser 3; group 1 = [1.8, 0.5, 0.5, 0.5] -> 4 over 5
    batches = list(algo.micro_batches(rollout, torch.tensor([1, 0, 2, 6])))
    assert len(batches) == 1
    batch = batches[0]
    assert batch.x0_w[:, 0, 0, 0].tolist() == [1.0] and batch.x0_l[:, 0, 0, 0].tolist() == [3.0]
    assert batch.cond.pos["e"].flatten().tolist() == [1]
    # 8 samples, 2 pairs: each pair stands for 4 samples of this 4-sample minibatch
    assert batch.weight.tolist() == [1.0]
    assert list(algo.micro_batches(rollout, torch.tensor([0, 2, 3, 7]))) == []  # no winner here: no pass
    (second,) = algo.micro_batches(rollout, torch.tensor([4, 5]))
    assert second.x0_w[:, 0, 0, 0].tolist() == [4.0] and second.weight.tolist() == [2.0]
    # the next pass over the same pair draws fresh noise
    (again,) = algo.micro_batches(rollout, torch.tensor([1]))
    assert int(again.seeds[0]) != int(batch.seeds[0])
    # a new iteration re-pairs: with b alone (weights 0, 1), group 0's winner is sample 1 and its loser sample 0
    algo.bind(RunContext(rewards=[(_Named("a"), 0.0), (_Named("b"), 1.0)]))
    algo.on_iteration_start(2)
    (third,) = algo.micro_batches(rollout, torch.arange(8))
    assert third.x0_w[:, 0, 0, 0].tolist() == [1.0, 4.0] and third.x0_l[:, 0, 0, 0].tolist() == [0.0, 5.0]


def test_online_kto_labels_follow_the_advantage_sign():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    rollout = _rollout({"a": torch.zeros(6)}, groups)
    rollout.advantages = torch.tensor([1.2, -0.4, -0.8, 0.0, 0.0, 0.0])
    rollout.mask = torch.tensor([True, True, True, False, False, False])
    algo = build_algorithm("diffusion_kto", {})
    algo.on_iteration_start(1)
    (batch,) = algo.micro_batches(rollout, torch.tensor([0, 1, 2, 3]))
    assert batch.sign.tolist() == [1.0, -1.0, -1.0, 0.0] and batch.weight == 0.25
    assert list(algo.micro_batches(rollout, torch.tensor([4, 5]))) == []


# ---------------------------------------------------------------------------------------------------------------
# preference data


def _png(path: Path, color: tuple[int, int, int], size: int = 64) -> None:
    Image.new("RGB", (size, size), color).save(path)


def _png_bytes(color: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _pair_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dataset(tmp_path: Path) -> Path:
    """Four pairs whose preferred image is brighter, one tie; paths, a subfolder and base64."""
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(4):
        bright, dark = tmp_path / "img" / f"b{i}.png", tmp_path / "img" / f"d{i}.png"
        _png(bright, (200 + 10 * i, 200, 200))
        _png(dark, (20 + 10 * i, 20, 20))
        first, second, label = (f"img/b{i}.png", f"img/d{i}.png", 1) if i % 2 else (f"img/d{i}.png", f"img/b{i}.png", 0)
        rows.append({"caption": f"a red circle {i}", "jpg_0": first, "jpg_1": second, "label_0": label})
    rows.append({"caption": "a tie", "jpg_0": base64.b64encode(_png_bytes((1, 2, 3))).decode(),
                 "jpg_1": "data:image/png;base64," + base64.b64encode(_png_bytes((4, 5, 6))).decode(),
                 "label_0": 0.5})
    return _pair_file(tmp_path, rows)


def test_pair_loader_orders_winners_skips_ties_and_reads_base64(tmp_path):
    pairs = load_preference_pairs(_dataset(tmp_path))
    assert len(pairs) == 4  # the tie is skipped
    for p in pairs:
        assert p.winner.source.name.startswith("b") and p.loser.source.name.startswith("d")
        assert p.winner.load(16, 16).mean() > p.loser.load(16, 16).mean()
    ok = _pair_file(tmp_path, [{"caption": "c", "jpg_0": base64.b64encode(_png_bytes((9, 9, 9))).decode(),
                                "jpg_1": "data:image/png;base64," + base64.b64encode(_png_bytes((1, 1, 1))).decode(),
                                "label_0": 0}])
    (p,) = load_preference_pairs(ok)
    assert float(p.winner.load(8, 8).max()) == pytest.approx(1 / 255)
    items = load_labelled_images(_dataset(tmp_path))  # a pair file read as labelled images: winner desirable
    assert len(items) == 8 and sum(x.desirable for x in items) == 4
    assert all(x.desirable == x.image.source.name.startswith("b") for x in items)


def test_jsonl_loader_errors_name_file_line_and_key(tmp_path):
    _png(tmp_path / "a.png", (1, 1, 1))
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    good = {"caption": "c", "jpg_0": "a.png", "jpg_1": "a.png", "label_0": 1}
    cases = [
        ([good, {k: v for k, v in good.items() if k != "jpg_1"}], r"pairs.jsonl:2: missing key 'jpg_1'"),
        ([{**good, "label_0": 2}], r"pairs.jsonl:1 \[label_0\]: label must be one of 0, 0.5, 1, got 2"),
        ([good, good, {**good, "jpg_0": "broken.png"}], r"pairs.jsonl:3 \[jpg_0\]: cannot read image .*broken.png"),
        ([{**good, "jpg_1": "missing.png"}], r"pairs.jsonl:1 \[jpg_1\]: image file 'missing.png' not found"),
        ([{**good, "caption": 3}], r"pairs.jsonl:1 \[caption\]: expected a string"),
        ([{**good, "label_0": 0.5}], r"pairs.jsonl: no preference pairs \(1 rows, all ties\)"),
    ]
    for rows, message in cases:
        with pytest.raises(UserError, match=message):
            load_preference_pairs(_pair_file(tmp_path, rows))
    (tmp_path / "pairs.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(UserError, match=r"pairs.jsonl:2: malformed JSON"):
        load_preference_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(UserError, match="not found"):
        load_preference_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"must be a .jsonl or .parquet"):
        load_preference_pairs(tmp_path / "a.png")
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text(json.dumps({"caption": "c", "image": "a.png", "label": 0.5}) + "\n")
    with pytest.raises(UserError, match=r"labels.jsonl:1 \[label\]: label must be one of 0, 1, got 0.5"):
        load_labelled_images(labelled)
    labelled.write_text(json.dumps({"caption": "c", "label": 1}) + "\n")
    with pytest.raises(UserError, match=r"labels.jsonl:1: missing key 'image'"):
        load_labelled_images(labelled)


def test_parquet_loader_reads_bytes_and_names_row_and_key(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    img = _png_bytes((250, 250, 250))
    dark = _png_bytes((5, 5, 5))

    def write(columns: dict) -> Path:
        path = tmp_path / "pairs.parquet"
        pq.write_table(pa.table(columns), path)
        return path

    path = write({"caption": ["x", "y", "z"], "jpg_0": [img, dark, img], "jpg_1": [dark, img, dark],
                  "label_0": [1.0, 0.0, 0.5]})
    pairs = load_preference_pairs(path)
    assert len(pairs) == 2 and all(p.winner.load(8, 8).mean() > 0.9 for p in pairs)
    with pytest.raises(UserError, match=r"pairs.parquet row 0: missing key 'label_0'"):
        load_preference_pairs(write({"caption": ["x"], "jpg_0": [img], "jpg_1": [dark]}))
    with pytest.raises(UserError, match=r"pairs.parquet row 1 \[label_0\]: label must be one of 0, 0.5, 1, got 3"):
        load_preference_pairs(write({"caption": ["x", "y"], "jpg_0": [img, img], "jpg_1": [dark, dark],
                                     "label_0": [1.0, 3.0]}))
    with pytest.raises(UserError, match=r"pairs.parquet row 1 \[jpg_1\]: cannot read image \(5 bytes\)"):
        load_preference_pairs(write({"caption": ["x", "y"], "jpg_0": [img, img], "jpg_1": [dark, b"junk!"],
                                     "label_0": [1.0, 1.0]}))


def test_shapes_pair_file_and_vae_encoding_round_trip(tmp_path):
    path = make_shapes_pairs(tmp_path / "shapes", num_pairs=3, size=64, seed=1)
    pairs = load_preference_pairs(path)
    assert len(pairs) == 3
    for family in ("flow", "diffusion"):
        gen = tiny_generator(family)
        images = torch.stack([pairs[0].winner.load(64, 64), pairs[0].loser.load(64, 64)])
        latents = gen.encode_images(images)
        assert latents.shape == (2, *gen.latent_shape())
        # encode is the VAE posterior mean under decode's scaling: decode(encode) is the VAE's reconstruction
        vae = gen.pipeline.vae
        with torch.no_grad():
            expected = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample.float() / 2 + 0.5
            torch.testing.assert_close(gen.decode(latents), expected.clamp(0, 1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# end to end through Trainer


def _trainer(tmp_path, overrides, family="flow", name="run"):
    base = [f"run_dir={tmp_path / name}", "eval.enabled=false", "log.progress=false", "data.prompts_per_iter=2",
            "data.group_size=4", "sampling.num_steps=3", "checkpoint.every=0", "train.lr=1e-2"]
    if family == "flow":
        base.append("model.max_sequence_length=0")
        pipe = build_flow_pipeline(seed=0)
    else:
        base += ["sampling.kernel=ddim", "sampling.noise_level=1.0"]
        pipe = build_diffusion_pipeline(seed=0)
    cfg = load_train_config(None, base + list(overrides))
    tr = Trainer(cfg, pipeline=(family, pipe), rewards=[(Brightness(), 1.0)])
    tr.generator.decode = linear_decode
    return tr


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _moved(tr: Trainer) -> bool:
    return any(v.abs().sum() > 0 for k, v in tr.generator.trainable_state_dict().items() if "lora_B" in k)


def test_online_dpo_trains_a_tiny_flow_model(tmp_path):
    tr = _trainer(tmp_path, ["algorithm.name=diffusion_dpo", "algorithm.options.beta=500", "train.iterations=2"])
    summary = tr.run()
    rows = _rows(tmp_path / "run")
    assert summary["finished"] and len(rows) == 2
    # one minibatch per iteration: the logged loss is the mean over pairs, log 2 before any update
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert rows[1]["loss"] != pytest.approx(LOG2, abs=1e-6) and math.isfinite(rows[1]["loss"])
    assert rows[0]["dpo/pairs"] == 2 and rows[0]["grad_norm"] > 0
    assert _moved(tr)


def test_offline_dpo_trains_a_tiny_diffusion_model_and_resumes_exactly(tmp_path):
    data = _dataset(tmp_path)
    common = ["algorithm.name=diffusion_dpo", f"algorithm.options.dataset={data}", "algorithm.options.beta=500",
              "data.group_size=2", "train.minibatch_size=2", "train.iterations=2"]
    straight = _trainer(tmp_path, common, "diffusion", name="straight")
    straight.run()
    rows = _rows(tmp_path / "straight")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["updates"] == 2 for r in rows)
    assert rows[0]["trained_samples"] == 4 and "time/data" in rows[0] and "reward/mean" not in rows[0]
    assert _moved(straight)
    # the trainer's checkpoint / resume covers the offline path: a split run ends bit for bit where this one did
    _trainer(tmp_path, [*common, "stop_after=1"], "diffusion", name="split").run()
    second = _trainer(tmp_path, [*common, "resume=auto"], "diffusion", name="split")
    second.run()
    a, b = straight.generator.trainable_state_dict(), second.generator.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming on another data set is refused, by the key that changed (the data order depends on it)
    fewer = _pair_file(tmp_path / "img", [{"caption": "c", "jpg_0": "b0.png", "jpg_1": "d0.png", "label_0": 1}])
    with pytest.raises(UserError, match="resuming with a changed algorithm.options.dataset"):
        _trainer(tmp_path, [*common, f"algorithm.options.dataset={fewer}", "resume=auto", "train.iterations=3"],
                 "diffusion", name="split").run()
    # a bad data set fails when the run is built, naming file, line and key
    bad = _pair_file(tmp_path, [{"caption": "c", "jpg_0": "img/b0.png", "jpg_1": "img/d0.png", "label_0": 7}])
    with pytest.raises(UserError, match=r"pairs.jsonl:1 \[label_0\]"):
        _trainer(tmp_path, ["algorithm.name=diffusion_dpo", f"algorithm.options.dataset={bad}"], "diffusion",
                 name="bad")


def test_kto_online_and_offline_on_tiny_models(tmp_path):
    tr = _trainer(tmp_path, ["algorithm.name=diffusion_kto", "algorithm.options.beta=500", "train.iterations=2"],
                  "diffusion", name="online")
    tr.run()
    rows = _rows(tmp_path / "online")
    # before any update the implicit reward is 0 for every sample: loss = 1 - sigmoid(0) = 1/2 (mean over samples)
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-6) and rows[0]["kto/kl"] == 0.0
    assert math.isfinite(rows[1]["loss"]) and _moved(tr)
    data = _dataset(tmp_path)
    off = _trainer(tmp_path, ["algorithm.name=diffusion_kto", f"algorithm.options.dataset={data}",
                              "data.group_size=2", "train.iterations=1"], "flow", name="offline")
    off.run()
    (row,) = _rows(tmp_path / "offline")
    assert row["loss"] == pytest.approx(0.5, abs=1e-6) and row["trained_samples"] == 4 and _moved(off)


# ---------------------------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("name, family", [("diffusion_dpo_online_shapes", "flow"),
                                          ("diffusion_dpo_offline_shapes", "diffusion"),
                                          ("diffusion_kto_shapes", "flow")])
def test_recipes_validate(name, family):
    cfg = load_train_config(RECIPES / f"{name}.yaml", [])
    algo = build_algorithm(cfg.algorithm.name, cfg.algorithm.options)
    assert algo.supports_family(family) and cfg.model.name == f"shapes-{family}"
