"""Best-of-k ceiling of a model: the share of prompts it gets right at least once in k tries, per tag.

    visalign sample --model shapes-flow --split test --images-per-prompt 16 --seed 0 --out samples/flow16
    python benchmarks/pass_at_k.py samples/flow16 --k 1,2,4,8,16

Scores every image with the ShapesWorld verifier (``shapes_strict``) and prints pass@k per tag and overall with
the unbiased estimator 1 - C(n - c, k) / C(n, k), averaged as ShapesBench averages (``visalign.eval.pass_at_k``
holds the formula and its reasoning): pass@1 is the folder's strict score, pass@k the score of a policy that
always drew the best of k of the model's own samples, and "never right" the share of prompts whose groups carry
no verifier gradient. The last line is the result as JSON.
"""

from __future__ import annotations

import argparse
import json

from visalign.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sample folder in GenEval's layout (visalign sample --out)")
    parser.add_argument("--k", default="1,2,4,8,16", help="comma-separated k values (default 1,2,4,8,16)")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        parser.error(f"--k takes comma-separated integers, got {args.k!r}")

    from visalign.eval.pass_at_k import prompt_counts, summarise  # after parsing: --help stays instant

    result = summarise(prompt_counts(args.folder), ks)
    print("tag".ljust(14) + "".join(f"pass@{k}".rjust(9) for k in ks) + "never right".rjust(13))
    for tag, row in [*result["tags"].items(), ("overall", result)]:
        print(tag.ljust(14) + "".join(f"{row[f'pass@{k}']:9.3f}" for k in ks) + f"{row['never_right']:13.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad folder or too large a k: one line, no traceback
