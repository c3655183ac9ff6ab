"""The per-sample gradient signal-to-noise ratio of every shipped ShapesWorld recipe at its base, and of the
quickstart's levers: the table of ``docs/signal.md``.

    python benchmarks/recipe_signal.py [--entries quickstart,quickstart_shuffled,...] [--rollouts 3] [--splits 8]
                                       [--out runs/recipe_signal] [--docs docs/signal.md]

Each entry is a recipe plus overrides measured by ``visalign.gradient_signal`` (two halves of a rollout, their
gradient cosine, r = 2 cos / (n (1 - cos))); finished entries under ``--out`` are reused. It writes
``docs/signal.json`` and the table between the ``<!-- recipe_signal -->`` markers of ``--docs``. The offline DPO
recipe (a fixed pair file, no rollout) and Pref-GRPO with a served VLM judge are not measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- recipe_signal -->"
# not measured: a fixed pair file and no rollout; a VLM judge served over HTTP
SKIPPED = {"diffusion_dpo_offline_shapes", "pref_grpo_shapes"}

# name -> (recipe, overrides, what the entry measures)
LEVERS: dict[str, tuple[str, list[str], str]] = {
    "quickstart_shuffled": ("quickstart", ["--shuffle"], "noise floor: rewards permuted within groups"),
    "quickstart_balanced": ("quickstart", ["data.balance_tags=true"], "every tag drawn equally often"),
    "quickstart_independent_noise": ("quickstart", ["algorithm.options.share_initial_noise=false"],
                                     "each group member from its own initial noise"),
    "quickstart_strict": ("quickstart", ["rewards=[{name: shapes_strict}]"], "the 0/1 verifier as the reward"),
    "quickstart_balanced_independent": ("quickstart", ["data.balance_tags=true",
                                                       "algorithm.options.share_initial_noise=false"],
                                        "balanced tags and independent initial noise"),
    "quickstart_graded": ("quickstart", ["rewards=[{name: shapes_graded}]"], "the graded verifier score as the reward"),
    "quickstart_balanced_graded": ("quickstart", ["data.balance_tags=true", "rewards=[{name: shapes_graded}]"],
                                   "balanced tags, graded reward"),
}


def entries() -> dict[str, tuple[str, list[str], str]]:
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*_shapes.yaml") if p.stem not in SKIPPED)
    out = {"quickstart": ("quickstart", [], "the quickstart as shipped")}
    out.update(LEVERS)
    out.update({name: (name, [], "shipped recipe") for name in recipes})
    out["vlm_quickstart"] = ("vlm_quickstart", [], "shipped recipe")
    return out


def run_one(name: str, recipe: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from visalign.gradient_signal import signal_of_recipe

    path = Path(args.out) / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    shuffle = "--shuffle" in overrides
    t0 = time.perf_counter()
    result = signal_of_recipe(str(ROOT / "recipes" / f"{recipe}.yaml"),
                              [o for o in overrides if o != "--shuffle"] + [f"train.threads={args.threads}"],
                              args.rollouts, args.splits, shuffle)
    result["seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def table(results: dict[str, dict[str, Any]], described: dict[str, tuple[str, list[str], str]],
          args: argparse.Namespace) -> str:
    lines = [f"Produced by `python benchmarks/recipe_signal.py --rollouts {args.rollouts} --splits {args.splits}` "
             f"on the 2-core machine ({args.threads} torch thread(s)); figures in `signal.json`. r is the "
             f"per-sample SNR of the mean cosine (0: the mean cosine was <= 0).", "",
             "| entry | what | samples | cosine +- s.e. | r (per sample) | zero-var groups | reward (within-group sd) |",
             "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        what = described[name][2]
        lines.append(f"| `{name}` | {what} | {res['samples']} | {res['cosine']:+.4f} +- {res['cosine_se']:.4f} | "
                     f"{res['per_sample_snr']:.1e} | {res['zero_var_groups']:.2f} | {res['reward_mean']:.3f} "
                     f"({res['reward_within_sd']:.3f}) |")
    return "\n".join(lines)


def write_docs(text: str, docs: Path) -> None:
    page = docs.read_text() if docs.is_file() else f"{MARKER}\n{MARKER}\n"
    head, _, rest = page.partition(MARKER)
    _, _, tail = rest.partition(MARKER)
    docs.write_text(f"{head}{MARKER}\n{text}\n{MARKER}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", help="comma-separated entry names (default: all)")
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--splits", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "recipe_signal"))
    parser.add_argument("--docs", default=str(ROOT / "docs" / "signal.md"))
    args = parser.parse_args()
    described = entries()
    names = args.entries.split(",") if args.entries else list(described)
    unknown = [n for n in names if n not in described]
    if unknown:
        raise SystemExit(f"unknown entries {unknown}; known: {', '.join(described)}")
    results = {}
    for name in names:
        recipe, overrides, _what = described[name]
        results[name] = run_one(name, recipe, overrides, args)
        res = results[name]
        print(f"{name}: cosine {res['cosine']:+.4f} +- {res['cosine_se']:.4f}, r {res['per_sample_snr']:.1e}, "
              f"zero-var {res['zero_var_groups']:.2f} ({res['seconds']:.0f}s)", flush=True)
    (ROOT / "docs" / "signal.json").write_text(json.dumps(results, indent=1))
    write_docs(table(results, described, args), Path(args.docs))


if __name__ == "__main__":
    from visalign.errors import exit_on_user_error

    exit_on_user_error(main)
