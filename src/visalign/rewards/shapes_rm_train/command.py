"""The command ``visalign rewards train-shapes-rm`` (its arguments: ``commands/rewards.py``).

The command builds the training pairs (synthetic over the ``train`` prompts, plus generated images), the
held-out sets (synthetic over the ``test`` prompts, held-out generated images), trains, measures agreement and
the pixel attack, and writes the model folder: ``model.safetensors``, ``config.json``, ``metrics.json`` (the
summary the card is made from) and ``README.md`` (the card).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visalign.errors import UserError
from visalign.rewards.shapes_rm_model import ShapesRM, load_rm, save_rm
from visalign.rewards.shapes_rm_train.agreement import heldout_agreement
from visalign.rewards.shapes_rm_train.card import model_card
from visalign.rewards.shapes_rm_train.generated import (
    Group,
    generated_pairs,
    other_prompt_pairs,
    own_prompt_pairs,
    read_generated,
    sample_generated,
    split_generated,
)
from visalign.rewards.shapes_rm_train.loop import TrainSettings, train
from visalign.rewards.shapes_rm_train.pairs import PairSet, synthetic_pairs
from visalign.rewards.shapes_rm_train.reward_hacking import pixel_attack
from visalign.rewards.shapes_rm_train.streams import DATA, HELDOUT_SAMPLES, HELDOUT_SYNTHETIC
from visalign.worlds.shapes.vocab import TAGS

_AT_LEAST_1 = ("steps", "batch_size")  # the other numeric arguments may be 0
# the agreement figures of the console table: key -> column
_FIGURES = {"pearson": "pearson", "spearman": "spearman", "mae": "MAE", "strict_accuracy": "strict acc.",
            "strict_auc": "strict AUC", "verifier_strict_rate": "verifier strict rate"}  # fmt: skip


@dataclass
class _Generated:
    """Generated images to train on, and the held-out ones in named groups (one per folder / source)."""

    train_images: np.ndarray
    train_metadata: list[dict]
    groups: list[Group]

    @property
    def heldout_metadata(self) -> list[dict]:
        return [m for g in self.groups for m in g[2]]

    @property
    def heldout_images(self) -> np.ndarray:
        if not self.groups:
            return np.zeros((0, 64, 64, 3), np.uint8)
        return np.concatenate([g[1] for g in self.groups])


def _checked_out_folder(args: Any) -> Path:
    """The output folder, once the numeric arguments are known to be in range."""
    for name in ("synthetic", "eval_synthetic", "steps", "batch_size"):
        if getattr(args, name) < (1 if name in _AT_LEAST_1 else 0):
            bound = "at least 1" if name in _AT_LEAST_1 else ">= 0"
            raise UserError(f"--{name.replace('_', '-')} must be {bound}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    return out


def _init_summary(folder: str | Path) -> dict[str, Any] | None:
    """The training facts of the model a run starts from (its ``metrics.json``, without the loss curve)."""
    path = Path(folder) / "metrics.json"
    try:
        facts = dict(json.loads(path.read_text(encoding="utf-8"))["training"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    facts.pop("history", None)
    return facts


def _generated_data(
    args: Any, train_prompts: list[dict], test_prompts: list[dict], progress: Any
) -> _Generated:
    """``--generated`` (less its ``--holdout``), ``--eval-generated`` and ``--model``'s samples."""
    images, metas = read_generated(args.generated or [])
    groups: list[Group] = [(Path(p).name, *read_generated([p])) for p in args.eval_generated or []]
    if len(metas) and not groups and args.holdout > 0:
        (images, metas), held = split_generated(images, metas, args.holdout, args.seed + DATA)
        groups.append(("held-out prompts of --generated", *held))
    if args.model and args.model_images > 0:
        seed = args.seed + DATA
        im, md = sample_generated(args.model, train_prompts, args.model_images, seed, progress=progress)
        images = np.concatenate([images, im]) if len(metas) else im
        metas = metas + md
    if args.model and args.model_eval_images > 0:
        seed = args.seed + HELDOUT_SAMPLES
        im, md = sample_generated(args.model, test_prompts, args.model_eval_images, seed, progress=progress)
        groups.append((f"{Path(str(args.model)).name} samples, test prompts", im, md))
    return _Generated(images, metas, [g for g in groups if len(g[2])])


def _heldout_sets(gen: _Generated, synthetic: PairSet, prompts: list[dict], seed: int) -> dict[str, PairSet]:
    """The named held-out sets; names indented by two spaces are parts of the set above them."""
    images, metas = gen.heldout_images, gen.heldout_metadata
    own = own_prompt_pairs(images, metas)
    sets = {"generated, own prompt": own}
    if len(gen.groups) > 1:
        start = 0
        for name, _, md in gen.groups:
            sets[f"  {name}"] = own.subset(range(start, start + len(md)))
            start += len(md)
    for tag in TAGS:
        idx = [i for i, m in enumerate(own.metadata) if m.get("tag") == tag]
        if idx and len(own):
            sets[f"  tag {tag}"] = own.subset(idx)
    sets["generated, another prompt of the tag"] = other_prompt_pairs(images, metas, prompts, seed)
    sets["synthetic, test prompts"] = synthetic
    for source in ("rendered", "mismatched", "shuffled", "extra"):
        sets[f"  {source}"] = synthetic.of_source(source)
    return sets


def _loss_logger(console: Any) -> Callable[[dict[str, float]], None]:
    def log(rec: dict[str, float]) -> None:
        console.print(
            f"step {rec['step']:>5}  loss_soft {rec['loss_soft']:.4f}  loss_strict {rec['loss_strict']:.4f}"
            f"  mae {rec['mae']:.4f}  {rec['wall']:.0f} s"
        )

    return log


def _training_facts(
    args: Any,
    pairs: PairSet,
    gen: _Generated,
    init_summary: dict[str, Any] | None,
    seconds: tuple[float, float],
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """The summary's ``training`` part: data, optimisation, the start model, (data, training) seconds."""
    sources = [Path(p).name for p in (args.generated or [])] + ([str(args.model)] if args.model else [])
    return {
        "pairs": len(pairs),
        "by_source": pairs.counts(),
        "generated_images": len(gen.train_metadata),
        "generated_prompts": len({m["prompt"] for m in gen.train_metadata}),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "init": str(args.init) if args.init else None,
        "init_training": init_summary,
        "generated_sources": sources,
        "data_seconds": round(seconds[0], 1),
        "train_seconds": round(seconds[1], 1),
        "threads": torch.get_num_threads(),
        "history": history,
    }


def _heldout_facts(gen: _Generated, synthetic: PairSet) -> dict[str, Any]:
    """The summary's ``heldout`` part: what the held-out sets hold."""
    metas = gen.heldout_metadata
    return {
        "generated_images": len(metas),
        "generated_prompts": len({m["prompt"] for m in metas}),
        "generated_groups": {name: len(md) for name, _, md in gen.groups},
        "synthetic_pairs": len(synthetic),
        "synthetic_by_source": synthetic.counts(),
    }


def _write(out: Path, model: ShapesRM, summary: dict[str, Any], card: bool) -> None:
    save_rm(model, out, extra={"parameters": model.num_parameters()})
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if card:
        (out / "README.md").write_text(model_card(model, summary), encoding="utf-8")


def _print_metrics(console: Any, metrics: dict[str, dict[str, float]]) -> None:
    from rich.table import Table

    table = Table(title="agreement with the verifier (held out)")
    for col in ("set", "n", *_FIGURES.values()):
        table.add_column(col)
    for name, m in metrics.items():
        table.add_row(name, str(m["n"]), *(f"{m[key]:.3f}" for key in _FIGURES))
    console.print(table)


def run_command(args: Any) -> int:
    """``visalign rewards train-shapes-rm`` (arguments: ``commands/rewards.py``)."""
    from rich.console import Console

    from visalign.report.progress import task_progress
    from visalign.worlds.shapes.prompts import load_split

    console = Console(stderr=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = _checked_out_folder(args)
    init = load_rm(args.init) if args.init else None
    init_summary = _init_summary(args.init) if args.init else None
    train_prompts, test_prompts = load_split("train"), load_split("test")
    t_start = time.perf_counter()
    with task_progress(console=console, transient=True) as progress:
        gen = _generated_data(args, train_prompts, test_prompts, progress)
        train_set = PairSet.concat([
            synthetic_pairs(train_prompts, args.synthetic, args.seed + DATA, progress=progress),
            generated_pairs(gen.train_images, gen.train_metadata, train_prompts, args.seed + DATA),
        ])  # fmt: skip
        seed = args.seed + HELDOUT_SYNTHETIC
        synthetic = synthetic_pairs(test_prompts, args.eval_synthetic, seed, progress=progress)
        heldout = _heldout_sets(gen, synthetic, train_prompts + test_prompts, args.seed + DATA)
        data_s = time.perf_counter() - t_start
        console.print(f"training pairs: {len(train_set)} {train_set.counts()} (built in {data_s:.0f} s)")
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 generated_weight=args.generated_weight)  # fmt: skip
        t_train = time.perf_counter()
        model, history = train(train_set, settings, model=init, progress=progress, log=_loss_logger(console))
        train_s = time.perf_counter() - t_train
        metrics = heldout_agreement(model, heldout)
        attack = pixel_attack(model, test_prompts[::3], seed=args.seed + DATA)
    summary = {
        "training": _training_facts(args, train_set, gen, init_summary, (data_s, train_s), history),
        "heldout": _heldout_facts(gen, synthetic),
        "agreement": metrics,
        "pixel_attack": attack,
        "note": args.card_note or "",
    }
    _write(out, model, summary, card=not args.no_card)
    _print_metrics(console, metrics)
    console.print(
        f"wrote {out} ({model.num_parameters():,} parameters; data {data_s:.0f} s, training {train_s:.0f} s)"
    )
    return 0
