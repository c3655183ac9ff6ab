"""Fuzz the command line with malformed inputs: every one must end in one ``error: ...`` line on stderr that names
the file, key or flag at fault, a non-zero exit status and no traceback.

The cases cover configs, overrides, prompt files, model folders, checkpoint folders, eval folders and flags. Their
garbage (random bytes, random bad values for random keys, random placement in a recipe or an override) comes from
``random.Random(SEED)``, so a failure reproduces. Almost all run in this process through ``visalign.cli.main``; a
few run as real ``python -m visalign.cli`` processes, to show that no traceback reaches a user's terminal. The tiny
model folder is shared; cases that need a model load it (about a second each).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from visalign.cli import main

SEED = 532
RNG = random.Random(SEED)
ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["model.max_sequence_length=0", "train.iterations=1", "eval.enabled=false", "log.progress=false",
            "data.prompts_per_iter=2", "data.group_size=2", "sampling.num_steps=2", "checkpoint.every=0",
            "train.threads=1"]  # fmt: skip
VALID_METADATA = {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"}


@dataclass
class Env:
    """What the cases share: the tiny model folder, and a fresh folder for the case's own files."""

    model: Path
    tmp: Path

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def model_copy(self) -> Path:
        copy = self.tmp / "model"
        shutil.copytree(self.model, copy)
        return copy

    def train(self, *extra: str) -> list[str]:
        """``visalign train`` on the tiny model (the case adds what is wrong)."""
        return ["train", f"model.name={self.model}", f"run_dir={self.tmp / 'run'}", *TINY_RUN, *extra]

    def sample(self, *extra: str, model: Path | str | None = None) -> list[str]:
        return ["sample", "--model", str(model or self.model), "--out", str(self.tmp / "out"), *extra]


# A case builds its inputs under env.tmp and returns (argv, what the error line must name).
Build = Callable[[Env], tuple[list[str], list[str]]]
CASES: dict[str, tuple[Build, bool]] = {}  # name -> (build, also run in a subprocess)


def case(name: str, subprocess_too: bool = False) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        assert name not in CASES, name
        CASES[name] = (build, subprocess_too)
        return build

    return register


def garbage(n: int = 64, printable: bool = False) -> bytes:
    """Seeded junk; ``printable``: ASCII that is neither JSON nor a YAML mapping."""
    if printable:
        return ("{" + "".join(RNG.choice("abc:;,[]{}\"' \t=") for _ in range(n)) + "\x00").encode()
    return bytes(RNG.randrange(128, 256) for _ in range(n))  # never valid UTF-8 on its own


# ---- configs --------------------------------------------------------------------------------------------------


def _recipe(text: str | bytes, needles: list[str] | None = None) -> Build:
    def build(env: Env) -> tuple[list[str], list[str]]:
        path = env.file("recipe.yaml", text)
        return ["train", "--config", str(path), f"run_dir={env.tmp / 'run'}"], [str(path), *(needles or [])]

    return build


RECIPES = {
    "yaml-unclosed-list": ("train: [unclosed\n", ["malformed YAML"]),
    "yaml-tab-indent": ("train:\n\tlr: 1\n", ["malformed YAML"]),
    "yaml-top-level-list": ("- train\n- lr\n", ["mapping"]),
    "yaml-top-level-scalar": ("42\n", ["mapping"]),
    "yaml-not-utf8": (b"seed: 1\n# " + garbage(12) + b"\n", ["UTF-8"]),
    "yaml-printable-junk": (garbage(40, printable=True), []),
    "wrong-type": ("train:\n  lr: fast\n", ["train.lr"]),
    "section-is-scalar": ("train: 5\n", ["'train'"]),
    "unknown-section": ("trian:\n  lr: 1\n", ["unknown key 'trian'", "did you mean 'train'"]),
    "unknown-nested-key": ("train:\n  lrr: 1\n", ["train.lrr", "did you mean 'train.lr'"]),
    "inf-lr": ("train:\n  lr: .inf\n", ["train.lr", "finite"]),
    "nan-noise-level": ("sampling:\n  noise_level: .nan\n", ["sampling.noise_level", "finite"]),
    "inf-reward-weight": ("rewards:\n  - name: shapes_soft\n    weight: -.inf\n", ["rewards.0.weight", "finite"]),
    "nan-lora-alpha": ("finetune:\n  lora_alpha: .nan\n", ["finetune.lora_alpha"]),
    "betas-one-value": ("train:\n  betas: [0.9]\n", ["train.betas"]),
    "betas-above-one": ("train:\n  betas: [0.5, 1.2]\n", ["train.betas"]),
    "betas-not-numbers": ("train:\n  betas: [a, b]\n", ["train.betas"]),
    "reward-unknown-option": ("rewards:\n  - name: shapes_soft\n    options: {foo: 1}\n",
                              ["rewards.0.options.foo", "shapes_soft"]),
    "reward-option-type": ("rewards:\n  - name: jpeg_compressibility\n    options: {quality: high}\n",
                           ["rewards.0.options.quality", "jpeg_compressibility"]),
    "reward-option-nan": ("rewards:\n  - name: shapes_pairwise\n    options: {tie_margin: .nan}\n",
                          ["rewards.0.options.tie_margin", "shapes_pairwise"]),
    "reward-missing-option": ("rewards:\n  - name: remote\n", ["rewards.0.options.url", "remote"]),
    "reward-unknown": ("rewards:\n  - name: shapes_softt\n", ["rewards.0.name", "shapes_softt"]),
    "rewards-empty": ("rewards: []\n", ["rewards"]),
    "algorithm-unknown": ("algorithm:\n  name: flow_grpoo\n", ["algorithm.name", "flow_grpoo"]),
    "algorithm-option-typo": ("algorithm:\n  name: ddpo\n  options: {clip_rnge: 0.1}\n",
                              ["algorithm.options.clip_rnge"]),
    "window-out-of-range": ("sampling:\n  num_steps: 4\n  train_window: [2, 9]\n", ["sampling.train_window"]),
    "dtype-literal": ("model:\n  dtype: float8\n", ["model.dtype"]),
    "resolution-negative": ("model:\n  resolution: -64\n", ["model.resolution"]),
}  # fmt: skip
for _name, (_text, _needles) in RECIPES.items():
    case(f"config-{_name}", subprocess_too=_name in ("yaml-unclosed-list", "inf-lr"))(_recipe(_text, _needles))


@case("config-missing-file")
def _missing_config(env: Env) -> tuple[list[str], list[str]]:
    return ["train", "--config", str(env.tmp / "nope.yaml")], [str(env.tmp / "nope.yaml"), "not found"]


@case("config-is-a-folder")
def _folder_config(env: Env) -> tuple[list[str], list[str]]:
    return ["train", "--config", str(env.tmp)], [str(env.tmp), "folder"]


@case("pretrain-config-non-finite")
def _pretrain_nan(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("pretrain.yaml", "family: flow\ntrain:\n  lr: .nan\n")
    return ["pretrain", "--config", str(path), f"run_dir={env.tmp / 'run'}"], [str(path), "train.lr", "finite"]


@case("pretrain-config-image-size")
def _pretrain_size(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("pretrain.yaml", "family: flow\nimage_size: 60\n")
    return ["pretrain", "--config", str(path), f"run_dir={env.tmp / 'run'}"], [str(path), "image_size"]


# Random bad values for random bounded keys, placed at random in a recipe file or in an override: the error must
# name whichever one held the value.
NUMERIC_KEYS = ["train.lr", "train.iterations", "data.group_size", "sampling.num_steps", "eval.every",
                "train.grad_clip", "advantage.eps", "finetune.lora_rank", "sampling.noise_level", "train.weight_decay",
                "train.adam_eps", "eval.batch_size", "checkpoint.keep_last", "train.ema.decay"]  # fmt: skip
BAD_VALUES = ["abc", ".nan", ".inf", "-.inf", "[1, 2]", "{a: 1}", "-5", "''"]


def _random_bad_value(index: int) -> Build:
    key, value, in_file = RNG.choice(NUMERIC_KEYS), RNG.choice(BAD_VALUES), RNG.random() < 0.5

    def build(env: Env) -> tuple[list[str], list[str]]:
        if in_file:
            section, field = key.rsplit(".", 1)
            lines, indent = [], ""
            for part in section.split("."):
                lines.append(f"{indent}{part}:")
                indent += "  "
            path = env.file("recipe.yaml", "\n".join([*lines, f"{indent}{field}: {value}"]) + "\n")
            return ["train", "--config", str(path), f"run_dir={env.tmp / 'run'}"], [str(path), key]
        return ["train", f"{key}={value}", f"run_dir={env.tmp / 'run'}"], [f"override '{key}={value}'"]

    return build


for _i in range(10):
    case(f"random-bad-value-{_i}")(_random_bad_value(_i))


# ---- overrides ----------------------------------------------------------------------------------------------------

OVERRIDES = {
    "no-equals": ("train.lr", ["override 'train.lr'"]),
    "empty-key": ("=5", ["override '=5'"]),
    "empty-part": ("train..lr=1", ["override 'train..lr=1'"]),
    "into-a-scalar": ("seed.x=1", ["override 'seed.x=1'", "seed"]),
    "unknown-key": ("train.lrr=1", ["override 'train.lrr=1'", "did you mean 'train.lr'"]),
    "list-index-on-defaults": ("rewards.3.weight=1", ["override 'rewards.3.weight=1'"]),
    "bad-literal": ("finetune.mode=half", ["override 'finetune.mode=half'", "finetune.mode"]),
    "reward-options-not-a-mapping": ("rewards=[{name: shapes_soft, options: [1]}]", ["rewards.0.options"]),
}  # fmt: skip
for _name, (_item, _needles) in OVERRIDES.items():

    def _override(env: Env, item: str = _item, needles: list[str] = _needles) -> tuple[list[str], list[str]]:
        return ["train", item, f"run_dir={env.tmp / 'run'}"], needles

    case(f"override-{_name}", subprocess_too=_name == "no-equals")(_override)


@case("override-index-past-the-recipe-list")
def _index(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("recipe.yaml", "rewards:\n  - name: shapes_soft\n")
    return ["train", "--config", str(path), "rewards.4.weight=2"], ["override 'rewards.4.weight=2'"]


# ---- prompt files -------------------------------------------------------------------------------------------------

PROMPT_FILES = {
    "empty.txt": (b"", ["no prompts"]),
    "blank.txt": (b"  \n\t\n", ["no prompts"]),
    "empty.jsonl": (b"\n\n", ["no prompts"]),
    "latin1.txt": ("un caf\xe9\n".encode("latin-1"), ["UTF-8"]),
    "binary.jsonl": (garbage(80), ["UTF-8"]),
    "junk-line.jsonl": (json.dumps(VALID_METADATA).encode() + b"\n" + garbage(30, printable=True) + b"\n", [":2"]),
    "array-line.jsonl": (b"[1, 2]\n", [":1"]),
    "no-prompt.jsonl": (json.dumps({k: v for k, v in VALID_METADATA.items() if k != "prompt"}).encode(), [":1"]),
    "bad-tag.jsonl": (json.dumps({**VALID_METADATA, "tag": "vibes"}).encode(), [":1", "vibes"]),
}
for _fname, (_content, _needles) in PROMPT_FILES.items():

    def _prompts(env: Env, fname: str = _fname, content: bytes = _content, needles: list[str] = _needles):
        path = env.file(fname, content)
        return env.sample("--prompts", str(path), model="shapes-flow"), [str(path), *needles]

    case(f"sample-prompts-{_fname}", subprocess_too=_fname == "latin1.txt")(_prompts)


@case("sample-prompts-missing")
def _prompts_missing(env: Env) -> tuple[list[str], list[str]]:
    return env.sample("--prompts", str(env.tmp / "gone.jsonl")), [str(env.tmp / "gone.jsonl")]


@case("sample-prompts-folder")
def _prompts_folder(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "dir.txt").mkdir()
    return env.sample("--prompts", str(env.tmp / "dir.txt")), [str(env.tmp / "dir.txt")]


@case("world-render-bad-prompts")
def _world_prompts(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("p.jsonl", json.dumps({**VALID_METADATA, "include": [{"class": "hexagon", "count": 1}]}))
    return ["world", "render", "--prompts", str(path), "--out", str(env.tmp / "o")], [str(path), "hexagon"]


@case("train-prompts-without-metadata-for-shapes-reward")
def _train_plain(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("plain.txt", "a red square\na blue star\n")
    return env.train(f"data.train={path}", "rewards=[{name: shapes_soft}]"), [str(path), "shapes_soft", "prompt 1"]


@case("train-test-prompts-without-metadata")
def _test_plain(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("plain.txt", "a red square\n")
    return env.train(f"data.test={path}", "eval.enabled=true", "rewards=[{name: shapes_strict}]"), [str(path)]


@case("train-prompts-malformed-jsonl")
def _train_junk(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("p.jsonl", '{"prompt": "a cat"}\n{"prompt": \n')
    return env.train(f"data.train={path}", "rewards=[{name: jpeg_compressibility}]"), [f"{path}:2"]


@case("train-prompts-not-utf8")
def _train_latin1(env: Env) -> tuple[list[str], list[str]]:
    path = env.file("p.txt", "caf\xe9\n".encode("latin-1"))
    return env.train(f"data.train={path}"), [str(path), "UTF-8", "data.train"]


@case("train-prompts-missing")
def _train_missing(env: Env) -> tuple[list[str], list[str]]:
    return env.train(f"data.train={env.tmp / 'gone.jsonl'}"), [str(env.tmp / "gone.jsonl")]


@case("train-remote-reward-gives-up")
def _remote_gone(env: Env) -> tuple[list[str], list[str]]:
    with socket.socket() as free:  # a port nothing listens on: every attempt is refused
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    return env.train(f"rewards=[{{name: remote, options: {{url: '{url}', retries: 1, backoff_s: 0}}}}]"), [
        "reward 'remote'", url]


# ---- model folders ------------------------------------------------------------------------------------------------


def _model_case(damage: Callable[[Env], Path], needles: Callable[[Path], list[str]]) -> Build:
    def build(env: Env) -> tuple[list[str], list[str]]:
        model = damage(env)
        return env.sample("--prompt", "a square", model=model), needles(model)

    return build


def _index_edit(edit: Callable[[dict], object]) -> Callable[[Env], Path]:
    def damage(env: Env) -> Path:
        model = env.model_copy()
        index = json.loads((model / "model_index.json").read_text())
        edit(index)
        (model / "model_index.json").write_text(json.dumps(index))
        return model

    return damage


MODELS = {
    "missing": (lambda env: env.tmp / "no-model", lambda m: [str(m)]),
    "empty-folder": (lambda env: env.file("m/.keep", "").parent, lambda m: [str(m), "model_index.json"]),
    "a-file": (lambda env: env.file("model.bin", garbage(16)), lambda m: [str(m)]),
    "index-junk": (lambda env: env.file("m/model_index.json", garbage(50, printable=True)).parent,
                   lambda m: [str(m / "model_index.json")]),
    "index-binary": (lambda env: env.file("m/model_index.json", garbage(50)).parent,
                     lambda m: [str(m / "model_index.json")]),
    "index-a-list": (lambda env: env.file("m/model_index.json", "[]").parent, lambda m: [str(m / "model_index.json")]),
    "index-unknown-class": (_index_edit(lambda i: i.update(_class_name="FluxPipeline")),
                            lambda m: [str(m), "FluxPipeline"]),
    "index-no-vae": (_index_edit(lambda i: i.pop("vae")), lambda m: [str(m), "vae"]),
    "index-vae-garbage": (_index_edit(lambda i: i.update(vae=5)), lambda m: [str(m), "vae"]),
    "no-vae-folder": (lambda env: (lambda m: (shutil.rmtree(m / "vae"), m)[1])(env.model_copy()),
                      lambda m: [str(m), "vae"]),
    "no-vae-weights": (lambda env: (lambda m: ([p.unlink() for p in (m / "vae").glob("*.safetensors")], m)[1])(
        env.model_copy()), lambda m: [str(m / "vae")]),
    "vae-config-junk": (lambda env: (lambda m: ((m / "vae" / "config.json").write_bytes(garbage(40, True)), m)[1])(
        env.model_copy()), lambda m: [str(m)]),
    "sampler-card-junk": (lambda env: (lambda m: ((m / "visalign.json").write_text("[1]"), m)[1])(env.model_copy()),
                          lambda m: [str(m / "visalign.json")]),
}  # fmt: skip
for _name, (_damage, _needles) in MODELS.items():
    case(f"model-{_name}", subprocess_too=_name == "index-a-list")(_model_case(_damage, _needles))


@case("train-model-missing")
def _train_model_missing(env: Env) -> tuple[list[str], list[str]]:
    return ["train", f"model.name={env.tmp / 'gone'}", f"run_dir={env.tmp / 'run'}"], [str(env.tmp / "gone")]


@case("train-resolution-the-model-cannot-take")
def _train_resolution(env: Env) -> tuple[list[str], list[str]]:
    return env.train("model.resolution=20"), ["model.resolution=20"]


# ---- checkpoint folders (generic: the checkpoint format is not assumed beyond meta.json and a state file) ----------


def _run_dir(env: Env) -> Path:
    """A run directory whose config.yaml names the tiny model, as training writes it, and no checkpoint yet."""
    from visalign.config import dump_config, load_train_config

    run = env.tmp / "run"
    run.mkdir()
    cfg = load_train_config(None, [f"model.name={env.model}", f"run_dir={run}", *TINY_RUN])
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def _checkpoint(files: dict[str, bytes | str]) -> Build:
    def build(env: Env) -> tuple[list[str], list[str]]:
        run = _run_dir(env)
        folder = run / "checkpoints" / "iter_000001"
        folder.mkdir(parents=True)
        for name, content in files.items():
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["export", str(run), "--out", str(env.tmp / "export"), "--checkpoint", str(folder)], [str(folder)]

    return build


STATE_FILES = ("state.pt", "state.safetensors")  # whichever one the format names, it is there (and garbage)
CHECKPOINTS = {
    "empty-folder": {},
    "no-meta": dict.fromkeys(STATE_FILES, garbage(32)),
    "meta-junk": {"meta.json": garbage(40, printable=True), **dict.fromkeys(STATE_FILES, garbage(32))},
    "meta-binary": {"meta.json": garbage(40), **dict.fromkeys(STATE_FILES, garbage(32))},
    "meta-a-list": {"meta.json": "[]", **dict.fromkeys(STATE_FILES, garbage(32))},
    "no-state": {"meta.json": json.dumps({"format_version": 2, "iteration": 1, "fingerprint": {}, "sha256": "0"})},
    "state-garbage": {"meta.json": json.dumps({"format_version": 2, "iteration": 1, "fingerprint": {}}),
                      **dict.fromkeys(STATE_FILES, garbage(32))},
}  # fmt: skip
for _name, _files in CHECKPOINTS.items():
    case(f"checkpoint-{_name}")(_checkpoint(_files))


@case("checkpoint-folder-missing")
def _ckpt_missing(env: Env) -> tuple[list[str], list[str]]:
    run = _run_dir(env)
    gone = run / "checkpoints" / "iter_000009"
    return ["export", str(run), "--out", str(env.tmp / "export"), "--checkpoint", str(gone)], [str(gone)]


@case("export-run-without-checkpoints")
def _no_ckpts(env: Env) -> tuple[list[str], list[str]]:
    run = _run_dir(env)
    return ["export", str(run), "--out", str(env.tmp / "export")], [str(run)]


@case("export-run-without-config")
def _no_config(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "run").mkdir()
    return ["export", str(env.tmp / "run"), "--out", str(env.tmp / "export")], [str(env.tmp / "run")]


@case("train-resume-from-empty-folder")
def _resume_empty(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "ckpt").mkdir()
    return env.train(f"resume={env.tmp / 'ckpt'}"), [str(env.tmp / "ckpt")]


# ---- eval folders -------------------------------------------------------------------------------------------------


def _eval_folder(env: Env, metadata: bytes | None = None, image: bytes | None = b"png") -> Path:
    """DIR/00000 with the given metadata.jsonl (None: none) and samples/0000.png (None: no samples folder)."""
    from PIL import Image

    root = env.tmp / "geneval"
    prompt = root / "00000"
    prompt.mkdir(parents=True)
    if metadata is not None:
        (prompt / "metadata.jsonl").write_bytes(metadata)
    if image is not None:
        (prompt / "samples").mkdir()
        if image == b"png":
            Image.new("RGB", (64, 64), "white").save(prompt / "samples" / "0000.png")
        else:
            (prompt / "samples" / "0000.png").write_bytes(image)
    return root


GOOD = json.dumps(VALID_METADATA).encode() + b"\n"
EVALS = {
    "no-metadata": (lambda env: _eval_folder(env, None), lambda root: [str(root / "00000")]),
    "metadata-junk": (lambda env: _eval_folder(env, garbage(50, printable=True)), lambda root: [str(root / "00000")]),
    "metadata-binary": (lambda env: _eval_folder(env, garbage(50)), lambda root: [str(root / "00000")]),
    "metadata-two-lines": (lambda env: _eval_folder(env, GOOD + GOOD), lambda root: [str(root / "00000")]),
    "metadata-unknown-class": (lambda env: _eval_folder(env, GOOD.replace(b"square", b"blob")),
                               lambda root: [str(root / "00000"), "blob"]),
    "no-samples-folder": (lambda env: _eval_folder(env, GOOD, None), lambda root: [str(root / "00000")]),
    "sample-not-an-image": (lambda env: _eval_folder(env, GOOD, garbage(90)), lambda root: [str(root / "00000")]),
    "sample-truncated-png": (lambda env: _eval_folder(env, GOOD, b"\x89PNG\r\n\x1a\n" + garbage(20)),
                             lambda root: [str(root / "00000")]),
    "empty-folder": (lambda env: env.file("geneval/.keep", "").parent, lambda root: [str(root)]),
    "missing-folder": (lambda env: env.tmp / "gone", lambda root: [str(root)]),
}  # fmt: skip
for _name, (_make, _needles) in EVALS.items():

    def _eval(env: Env, make=_make, needles=_needles) -> tuple[list[str], list[str]]:
        root = make(env)
        return ["eval", str(root), "--no-write"], needles(root)

    case(f"eval-{_name}", subprocess_too=_name == "metadata-junk")(_eval)


# ---- flags --------------------------------------------------------------------------------------------------------

FLAGS = {
    "sample-steps-zero": (["--steps", "0"], "--steps"),
    "sample-steps-word": (["--steps", "many"], "--steps"),
    "sample-guidance-nan": (["--guidance", "nan"], "--guidance"),
    "sample-guidance-inf": (["--guidance=-inf"], "--guidance"),
    "sample-images-negative": (["--images-per-prompt", "-3"], "--images-per-prompt"),
    "sample-batch-zero": (["--batch-size", "0"], "--batch-size"),
    "sample-threads-zero": (["--threads", "0"], "--threads"),
    "sample-max-sequence-negative": (["--max-sequence-length", "-1"], "--max-sequence-length"),
}
for _name, (_flags, _flag) in FLAGS.items():

    def _sample_flag(env: Env, flags=_flags, flag=_flag) -> tuple[list[str], list[str]]:
        return env.sample("--prompt", "a square", *flags, model="shapes-flow"), [f"argument {flag}"]

    case(f"flag-{_name}", subprocess_too=_name == "sample-guidance-nan")(_sample_flag)


@case("flag-sample-out-is-a-file")
def _out_file(env: Env) -> tuple[list[str], list[str]]:
    taken = env.file("taken.png", garbage(8))
    return ["sample", "--model", "shapes-flow", "--prompt", "x", "--out", str(taken)], ["--out", str(taken)]


@case("flag-world-size-too-small")
def _world_size(env: Env) -> tuple[list[str], list[str]]:
    return ["world", "render", "--size", "8", "--out", str(env.tmp / "o")], ["argument --size"]


@case("flag-world-out-below-a-file")
def _world_out(env: Env) -> tuple[list[str], list[str]]:
    taken = env.file("taken", "x")
    return ["world", "render", "--out", str(taken / "sub")], ["--out", str(taken)]


@case("flag-shapes-rm-lr-nan")
def _rm_lr(env: Env) -> tuple[list[str], list[str]]:
    return ["rewards", "train-shapes-rm", "--out", str(env.tmp / "rm"), "--lr", "nan"], ["argument --lr"]


@case("flag-shapes-rm-holdout-above-one")
def _rm_holdout(env: Env) -> tuple[list[str], list[str]]:
    return ["rewards", "train-shapes-rm", "--out", str(env.tmp / "rm"), "--holdout", "1.5"], ["argument --holdout"]


@case("flag-pretrain-from-export-negative")
def _from_export(env: Env) -> tuple[list[str], list[str]]:
    return ["pretrain", "--config", str(ROOT / "configs/pretrain/flow.yaml"), "--from-export", "-1"], ["--from-export"]


@case("flag-report-out-is-a-folder")
def _report_out(env: Env) -> tuple[list[str], list[str]]:
    return ["report", str(env.tmp), "--out", str(env.tmp)], ["argument --out", str(env.tmp)]


@case("flag-export-out-is-a-file")
def _export_out(env: Env) -> tuple[list[str], list[str]]:
    taken = env.file("taken", "x")
    return ["export", str(env.tmp), "--out", str(taken)], ["argument --out", str(taken)]


@case("flag-demo-images-zero")
def _demo_images(env: Env) -> tuple[list[str], list[str]]:
    return ["demo", "--world", "--images-per-prompt", "0", "--out", str(env.tmp / "o")], ["--images-per-prompt"]


@case("flag-eval-folder-missing")
def _eval_arg(env: Env) -> tuple[list[str], list[str]]:
    return ["eval"], ["folder"]


@case("flag-serve-reward-unknown-option")
def _serve_option(env: Env) -> tuple[list[str], list[str]]:
    return ["serve-reward", "shapes_strict", "tie_margin=0.1"], ["shapes_strict", "tie_margin"]


# ---- the checks ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from visalign.pretrain.build import build_flow_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "flow"
    build_flow_pipeline(seed=0).save_pretrained(folder)
    (folder / "visalign.json").write_text(json.dumps({"sampler": {"max_sequence_length": 0}}))
    return folder


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr  # one line (warnings a library logs may stand beside it)
    return lines[0]


def test_there_are_enough_cases():
    assert len(CASES) >= 50
    assert sum(subprocess_too for _build, subprocess_too in CASES.values()) >= 5


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(name, tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes and shipped models resolve as from the source tree
    argv, needles = CASES[name][0](Env(tiny_model, tmp_path))
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse rejects a flag by exiting
        rc = exc.code
    line = _error_line(capsys.readouterr().err)
    assert rc not in (0, None), line
    for needle in needles:
        assert needle in line, (needle, line)


@pytest.mark.parametrize("name", sorted(n for n, (_b, sub) in CASES.items() if sub))
def test_no_traceback_reaches_a_real_terminal(name, tiny_model, tmp_path):
    argv, needles = CASES[name][0](Env(tiny_model, tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "visalign.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    line = _error_line(done.stderr)
    assert done.returncode != 0 and all(needle in line for needle in needles), (needles, line)
