"""The token-policy algorithms on the same base and budget: the side-by-side table of the VLM quickstart.

    python benchmarks/compare_token_algorithms.py [--algorithms quickstart,grpo,dapo,...] [--seeds 0,1]
                                                  [--iterations N] [--out runs/compare_token]
                                                  [--docs docs/algorithms.md]

Each entry runs ``recipes/vlm_quickstart.yaml`` through the one ``Trainer`` with the entry's overrides, once per
seed: ``quickstart`` is the recipe exactly as shipped (its time budget included: the quickstart's own check);
every other entry runs ``--iterations`` iterations (default: the recipe's) without a time budget, so all of them
train on the same number of sampled answers. The held-out evaluation (all 350 test questions, greedy answers,
exact match) runs before and after training. Gains are paired question by question (``eval.paired_answers``):
mean +- standard error per seed. It writes ``docs/token_algorithms.json`` and the table between the
``<!-- compare_token_algorithms -->`` markers of ``--docs``. Finished runs under ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from visalign.errors import exit_on_user_error
from visalign.eval.paired import paired_answers

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "vlm_quickstart.yaml"
MARKER = "<!-- compare_token_algorithms -->"

# name -> overrides of the recipe (its algorithm options, e.g. kl_beta, apply to every entry)
ENTRIES: dict[str, list[str]] = {
    "quickstart": [],
    "grpo": ["algorithm.name=grpo"],
    "dapo": ["algorithm.name=dapo"],
    "dr_grpo": ["algorithm.name=dr_grpo", "advantage.std=none"],
    "gspo": ["algorithm.name=gspo"],
    "grpo_rloo": ["algorithm.name=grpo", "advantage.mode=rloo"],
    "grpo_reinforce_pp": ["algorithm.name=grpo", "advantage.mode=reinforce_pp"],
}


def _evals(run_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (run_dir / "evals").glob("iter_*/results.json"))


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    run_dir = Path(args.out) / f"{name}_seed{seed}"
    overrides = [f"run_dir={run_dir}", f"seed={seed}", "eval.every=0", "checkpoint.every=0", "log.progress=false",
                 *ENTRIES[name]]
    if name != "quickstart":
        overrides.append("train.time_budget_min=null")
        if args.iterations:
            overrides.append(f"train.iterations={args.iterations}")
    summary_path = run_dir / "summary.json"
    if not (summary_path.is_file() and json.loads(summary_path.read_text()).get("finished")):
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        Trainer(load_train_config(RECIPE, overrides)).run()
        print(f"{name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    summary = json.loads(summary_path.read_text())
    first, last = _evals(run_dir)[0], _evals(run_dir)[-1]
    gain = paired_answers(first, last)
    timings = summary.get("timings_s", {})
    return {"seed": seed, "iterations": summary["iterations_done"], "base": summary["base"],
            "final": summary["final"], "gain": round(gain["diff_mean"], 4), "se": round(gain["diff_se"], 4),
            "questions": gain["pairs"], "wall_s": round(timings.get("wall", 0.0), 1),
            "train_s": round(sum(timings.get(k, 0.0) for k in ("rollout", "reward", "train")), 1)}


def write_docs(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    docs = Path(args.docs)
    (docs.parent / "token_algorithms.json").write_text(json.dumps(
        {"recipe": "recipes/vlm_quickstart.yaml", "iterations": args.iterations, "results": results}, indent=1) + "\n")
    lines = ["| entry | seed | iterations | held-out exact match: base -> final | paired gain +- s.e. | "
             "per type after (count, color, shape, yes/no, which, text, box) | wall s |", "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for r in runs:
            per = " / ".join(f"{v:.2f}" for v in (r["final"].get("per_tag") or {}).values())
            lines.append(f"| `{name}` | {r['seed']} | {r['iterations']} | {r['base']['overall']:.3f} -> "
                         f"**{r['final']['overall']:.3f}** | {r['gain']:+.3f} +- {r['se']:.3f} | {per} | "
                         f"{r['wall_s']:.0f} |")
    seeds = ",".join(str(s) for s in args.seed_list)
    block = (f"{MARKER}\nProduced by `python benchmarks/compare_token_algorithms.py --algorithms "
             f"{','.join(results)} --seeds {seeds}{f' --iterations {args.iterations}' if args.iterations else ''}` "
             f"on the recipe `recipes/vlm_quickstart.yaml` (figures in `token_algorithms.json`).\n\n"
             + "\n".join(lines) + f"\n{MARKER}")
    text = docs.read_text() if docs.is_file() else "# Algorithms\n"
    if MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{MARKER}\n{MARKER}\n"
    head, _, rest = text.partition(MARKER)
    _, _, tail = rest.partition(MARKER)
    docs.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default=",".join(ENTRIES), help="comma-separated subset of: "
                        + ", ".join(ENTRIES))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--iterations", type=int, default=0, help="iterations of every non-quickstart entry "
                        "(0: the recipe's)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "compare_token"))
    parser.add_argument("--docs", default=str(ROOT / "docs" / "algorithms.md"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        parser.error(f"unknown entries {unknown}; known: {', '.join(ENTRIES)}")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        results[name] = [run_one(name, seed, args) for seed in args.seed_list]
        write_docs(results, args)
        for r in results[name]:
            print(f"{name} seed {r['seed']}: {r['base']['overall']:.3f} -> {r['final']['overall']:.3f} "
                  f"({r['gain']:+.3f} +- {r['se']:.3f})", flush=True)
    return results


if __name__ == "__main__":
    exit_on_user_error(main)
