"""Best-of-k ceiling of a base model: the share of prompts it gets right at least once in k tries.

    visalign sample --model shapes-flow --split test --images-per-prompt 16 --seed 0 --out samples/flow16
    python benchmarks/pass_at_k.py samples/flow16 --k 1,2,4,8,16

Reinforcement learning from a verifier mostly sharpens what a model already does now and then: a prompt the
base never gets right in many tries gives every sample of its group the same strict reward, hence no
advantage and no gradient. pass@k (the unbiased estimator of Chen et al., 2021: 1 - C(n - c, k) / C(n, k) for
c right images out of n) per tag, averaged as ShapesBench averages (mean over prompts within a tag, then over
tags), tells how far sharpening alone could lift the strict score: pass@1 is the base's score, pass@k the
score of a policy that always drew the best of k of the base's own samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from math import comb

from visalign.eval.geneval_layout import load_image, read_folder
from visalign.rewards._images import from_uint8
from visalign.rewards.base import build_reward


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k images drawn without replacement from n (c of them right) is right."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def prompt_counts(folder: str) -> list[tuple[str, int, int]]:
    """(tag, images, strictly right images) for every prompt folder."""
    reward = build_reward("shapes_strict")
    rows = []
    for _, metadata, paths in read_folder(folder):
        images = from_uint8([load_image(p) for p in paths])
        scores = reward.score(images, [metadata["prompt"]] * len(paths), [metadata] * len(paths))
        right = int((scores["shapes_strict"] > 0.5).sum())
        rows.append((metadata["tag"], len(paths), right))
    return rows


def summarise(rows: list[tuple[str, int, int]], ks: list[int]) -> dict:
    """pass@k per tag and overall (mean over tags), and the share of prompts never right."""
    n_min = min(n for _, n, _ in rows)
    if max(ks) > n_min:
        raise SystemExit(f"error: k = {max(ks)} needs at least {max(ks)} images per prompt; a folder has {n_min}")
    by_tag: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for tag, n, c in rows:
        by_tag[tag].append((n, c))
    out: dict = {"prompts": len(rows), "images_per_prompt": n_min, "tags": {}}
    for tag in sorted(by_tag):
        counts = by_tag[tag]
        out["tags"][tag] = {
            f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks
        } | {"never_right": sum(c == 0 for _, c in counts) / len(counts)}
    for key in [f"pass@{k}" for k in ks] + ["never_right"]:
        out[key] = sum(row[key] for row in out["tags"].values()) / len(out["tags"])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sample folder in GenEval's layout (visalign sample --out)")
    parser.add_argument("--k", default="1,2,4,8,16", help="comma-separated k values (default 1,2,4,8,16)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    result = summarise(prompt_counts(args.folder), ks)
    header = "tag".ljust(14) + "".join(f"pass@{k}".rjust(9) for k in ks) + "never right".rjust(13)
    print(header)
    for tag, row in list(result["tags"].items()) + [("overall", result)]:
        print(tag.ljust(14) + "".join(f"{row[f'pass@{k}']:9.3f}" for k in ks) + f"{row['never_right']:13.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
