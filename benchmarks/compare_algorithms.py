"""Every algorithm on the same base and the same budget of generated images: the side-by-side table.

    python benchmarks/compare_algorithms.py [--images 12800] [--algorithms flow_grpo,rwr,...] [--evals 4]
                                            [--out runs/compare] [--docs docs/algorithms.md] [--table NAME]

For each entry of ``ENTRIES`` it runs ``visalign train`` on the entry's recipe (in this process, through the one
``Trainer``) with ``train.iterations`` set so that the run generates ``--images`` rollout images, evaluation on the
held-out test split every ``--images / --evals`` images, no time budget, and the learned ShapesWorld reward model
(``shapes_rm``) added with weight 0 when the recipe does not use it, so that every evaluation also reports the
learned-RM score of the same held-out images. It then writes

* ``docs/algorithms.json``: per algorithm the curve (images generated -> strict, soft, learned-RM score), the final
  scores, wall time (training + evaluation), images generated to first reach +0.2 strict over the base (or null);
* ``docs/algorithms.md``: the table, the curve plot (``docs/img/algorithms_curves.png``) and the notes.

``--table NAME`` keeps a second table on the same page (another base, another budget): its block sits between
``<!-- compare_algorithms:NAME -->`` markers (appended at the end of the page the first time), its figures in
``docs/algorithms_NAME.json`` and its plot in ``docs/img/algorithms_NAME_curves.png``.

Runs already finished under ``--out`` are reused (delete a run folder to redo it), so an interrupted comparison
continues where it stopped. ``--images`` is the budget knob: the documented table names the budget it used.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from visalign.errors import exit_on_user_error
from visalign.eval.paired import paired_gain  # the strict gain, image by image, first to last evaluation

ROOT = Path(__file__).resolve().parents[1]

# name -> (recipe, family of updates) ; the recipe's algorithm, sampler and hyperparameters are used as they are
ENTRIES: dict[str, tuple[str, str]] = {
    "flow_grpo": ("flow_grpo_shapes.yaml", "policy gradient"),
    "flow_grpo_fast": ("flow_grpo_fast_shapes.yaml", "policy gradient"),
    "mixgrpo": ("mixgrpo_shapes.yaml", "policy gradient"),
    "mixgrpo_flash": ("mixgrpo_flash_shapes.yaml", "policy gradient"),
    "dancegrpo": ("dancegrpo_shapes.yaml", "policy gradient"),
    "flow_grpo_cps": ("flow_grpo_cps_shapes.yaml", "policy gradient"),
    "tempflow_grpo": ("tempflow_grpo_shapes.yaml", "policy gradient"),
    "grpo_guard": ("grpo_guard_shapes.yaml", "policy gradient"),
    "gdpo": ("gdpo_shapes.yaml", "policy gradient"),
    "pref_grpo": ("pref_grpo_verifier_shapes.yaml", "policy gradient"),
    "dpok": ("dpok_shapes.yaml", "policy gradient"),
    "ddpo": ("ddpo_shapes.yaml", "policy gradient"),
    "diffusion_nft": ("diffusion_nft_shapes.yaml", "forward process"),
    "awm": ("awm_shapes.yaml", "forward process"),
    "rwr": ("rwr_shapes.yaml", "forward process"),
    "raft": ("raft_shapes.yaml", "forward process"),
    "diffusion_dpo_online": ("diffusion_dpo_online_shapes.yaml", "preference"),
    "diffusion_dpo_offline": ("diffusion_dpo_offline_shapes.yaml", "preference"),
    "diffusion_kto": ("diffusion_kto_shapes.yaml", "preference"),
    "refl": ("refl_shapes.yaml", "reward backprop"),
    "draft": ("draft_shapes.yaml", "reward backprop"),
    "alignprop": ("alignprop_shapes.yaml", "reward backprop"),
}
RM = "shapes_rm"
# Offline entries draw no rollouts: their budget is the same number of images read from a ShapesWorld pair file
# (a correct rendering against a one-way-wrong one, ``make_shapes_pairs``), each pair seen once.
OFFLINE = {"diffusion_dpo_offline"}


def _overrides(
    recipe: Path, run_dir: Path, images: int, evals: int, threads: int, offline: bool = False
) -> tuple[list[str], int, int]:
    import yaml

    data = yaml.safe_load(recipe.read_text()) or {}
    d = data.get("data") or {}
    # online: prompts x group images per iteration; offline: that many pairs, two images each
    per_iter = int(d.get("prompts_per_iter", 8)) * int(d.get("group_size", 4)) * (2 if offline else 1)
    iterations = max(1, math.ceil(images / per_iter))
    every = max(1, iterations // max(1, evals))
    out = [f"run_dir={run_dir}", f"train.iterations={iterations}", f"eval.every={every}",
           "train.time_budget_min=null", "checkpoint.every=0", "log.progress=false", f"train.threads={threads}"]
    if offline:
        from visalign.preference_data import make_shapes_pairs

        pairs = make_shapes_pairs(run_dir.parent / "shapes_pairs", iterations * per_iter // 2, seed=0)
        out.append(f"algorithm.options.dataset={pairs}")
    names = [r.get("name") for r in data.get("rewards") or []]
    if RM not in names:
        rewards = list(data.get("rewards") or [{"name": "shapes"}]) + [{"name": RM, "weight": 0.0}]
        out.append("rewards=" + json.dumps(rewards))
    return out, iterations, per_iter


def _eval_files(run_dir: Path) -> list[Path]:
    """The run's held-out evaluations (``visalign eval``'s results.json), in iteration order."""
    return sorted((run_dir / "evals").glob("iter_*/results.json"))


def _curve(run_dir: Path, per_iter: int) -> list[dict[str, Any]]:
    points = []
    for path in _eval_files(run_dir):
        res = json.loads(path.read_text())
        it = int(path.parent.name.split("_")[1])
        points.append({"iteration": it, "images": it * per_iter, "strict": res["overall"], "soft": res.get("soft"),
                       "rm": (res.get("rewards") or {}).get(RM), "per_tag": res.get("per_tag"),
                       "eval_images": len(res.get("images") or [])})
    return points


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    recipe_name, family = ENTRIES[name]
    recipe = ROOT / "recipes" / recipe_name
    run_dir = Path(args.out) / name
    overrides, iterations, per_iter = _overrides(
        recipe, run_dir, args.images, args.evals, args.threads, offline=name in OFFLINE
    )
    summary_path = run_dir / "summary.json"
    if not (summary_path.is_file() and json.loads(summary_path.read_text()).get("finished")):
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        cfg = load_train_config(recipe, overrides)
        t0 = time.perf_counter()
        Trainer(cfg).run()
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    summary = json.loads(summary_path.read_text())
    cfg = load_train_config(recipe, overrides)
    curve = _curve(run_dir, per_iter)
    base = curve[0]["strict"]
    reached = next((p["images"] for p in curve if p["strict"] >= base + 0.2), None)
    evals = _eval_files(run_dir)
    gain = paired_gain(evals[0], evals[-1])
    timings = summary.get("timings_s", {})
    return {
        "algorithm": cfg.algorithm.name, "family": family, "recipe": f"recipes/{recipe_name}",
        "model": cfg.model.name, "iterations": iterations, "images_per_iteration": per_iter,
        "images": iterations * per_iter, "images_kind": "pair-file images read" if name in OFFLINE else "generated",
        "base": curve[0], "final": curve[-1], "curve": curve,
        "images_to_plus_0.2": reached,
        "strict_gain_paired": {"mean": round(gain["diff_mean"], 4), "se": round(gain["diff_se"], 4),
                               "images": gain["pairs"]},
        "wall_s": round(timings.get("wall", 0.0), 1),
        "train_s": round(sum(timings.get(k, 0.0) for k in ("rollout", "reward", "train")), 1),
    }


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """One column per family (so that no colour repeats within a panel): the held-out strict gain over the run's
    base (the two bases start at different levels) on top, the learned-RM gain below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in results.values()))
    fig, axes = plt.subplots(2, len(families), figsize=(4.2 * len(families), 7), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for col, family in enumerate(families):
        members = [(n, r) for n, r in results.items() if r["family"] == family]
        for k, (name, r) in enumerate(members):
            xs = [p["images"] for p in r["curve"]]
            # tab20 pairs a dark and a light shade of each hue: the ten dark ones first, then the light ones
            style = {"marker": "o", "ms": 3, "color": colours[(2 * k) % 20 if k < 10 else (2 * k + 1) % 20]}
            base = r["curve"][0]
            axes[0][col].plot(xs, [p["strict"] - base["strict"] for p in r["curve"]], label=name, **style)
            rm = [p["rm"] - base["rm"] if p["rm"] is not None and base["rm"] is not None else float("nan")
                  for p in r["curve"]]
            axes[1][col].plot(xs, rm, **style)
        axes[0][col].set_title(family)
        axes[0][col].legend(fontsize=7)
        axes[1][col].set_xlabel("images generated")
        for row in (0, 1):
            axes[row][col].axhline(0.0, color="black", lw=0.8)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out strict (verifier), gain over base")
    axes[1][0].set_ylabel("learned RM (shapes_rm), gain over base")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_files(docs: Path, table: str) -> tuple[Path, Path, str]:
    """The JSON, the plot and the marker of one table on the page ``docs`` ("table": the page's first one)."""
    suffix = "" if table == "table" else f"_{table}"
    return (docs.with_name(f"{docs.stem}{suffix}.json"), docs.parent / "img" / f"{docs.stem}{suffix}_curves.png",
            f"<!-- compare_algorithms:{table} -->")


def write_docs(results: dict[str, dict[str, Any]], args: argparse.Namespace, notes: str) -> None:
    docs = Path(args.docs)
    json_path, img, marker = table_files(docs, args.table)
    payload = {"images_budget": args.images, "evals": args.evals, "threads": args.threads, "results": results}
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    plot(results, img)
    lines = [
        "| algorithm | family | base | strict (base -> final, paired gain +- s.e.) | soft | learned RM "
        "| images to +0.2 | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        b, f = r["base"], r["final"]
        paired = r.get("strict_gain_paired") or {}
        gain = round(paired.get("mean", f["strict"] - b["strict"]), 3) + 0.0  # + 0.0: no "-0.000" for a tie
        se = f" +- {paired['se']:.3f}" if "se" in paired else ""
        kind = "" if r.get("images_kind", "generated") == "generated" else " (pair-file images)"
        lines.append(
            f"| `{name}` | {r['family']} | {r['model']} | {_fmt(b['strict'])} -> **{_fmt(f['strict'])}** "
            f"({gain:+.3f}{se}) | {_fmt(b['soft'])} -> {_fmt(f['soft'])} | "
            f"{_fmt(b['rm'])} -> {_fmt(f['rm'])} | {r['images_to_plus_0.2'] or 'not reached'}{kind} | "
            f"{r['wall_s']:.0f} |"
        )
    table = "\n".join(lines)
    text = docs.read_text() if docs.is_file() else "# Algorithms\n"
    if marker not in text:
        text = text.rstrip("\n") + f"\n\n{marker}\n{marker}\n"
    head, _, rest = text.partition(marker)
    _, _, tail = rest.partition(marker)
    eval_images = sorted({r["base"].get("eval_images") for r in results.values()} - {None})
    per_eval = " / ".join(str(n) for n in eval_images) or "?"
    block = (f"{marker}\nBudget: {args.images} generated images per algorithm, {args.evals} held-out evaluations "
             f"({per_eval} images of the test split each, the same prompts and seeds every time, deterministic "
             f"sampler), torch threads {args.threads}. "
             f"Produced by `python benchmarks/compare_algorithms.py --images {args.images} --evals {args.evals}"
             f"{'' if args.table == 'table' else ' --table ' + args.table}`; figures in `{json_path.name}`.\n\n{table}\n\n![curves](img/{img.name})\n\n{notes}"
             f"{marker}")
    docs.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12800, help="rollout images generated per algorithm")
    parser.add_argument("--evals", type=int, default=4, help="held-out evaluations per run (plus the base)")
    parser.add_argument("--algorithms", default=",".join(ENTRIES), help="comma-separated subset of: "
                        + ", ".join(ENTRIES))
    parser.add_argument("--out", default=str(ROOT / "runs" / "compare"))
    parser.add_argument("--docs", default=str(ROOT / "docs" / "algorithms.md"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--notes", default="", help="markdown appended under the table")
    parser.add_argument("--table", default="table", help="which table of the page to write (a second one keeps "
                        "its own markers, JSON and plot)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; known: {', '.join(ENTRIES)}")
    json_path = table_files(Path(args.docs), args.table)[0]

    def previous() -> dict[str, Any]:
        """Results already written for this budget (re-read before each write: several processes may share
        the page, each running a subset of the algorithms)."""
        if not json_path.is_file():
            return {}
        old = json.loads(json_path.read_text())
        return old.get("results", {}) if old.get("images_budget") == args.images else {}

    results: dict[str, Any] = {}
    for name in names:
        results[name] = run_one(name, args)
        merged = {**previous(), **results}
        write_docs({n: merged[n] for n in ENTRIES if n in merged}, args, args.notes)
    return {**previous(), **results}


if __name__ == "__main__":
    exit_on_user_error(main)  # an unknown recipe key or mismatched evaluations: one line, no traceback
