"""How much could RL sharpen a vision-language model? pass@k per question type of its sampled answers.

    python experiments/vlm_headroom.py MODEL_FOLDER [--k 8] [--split test] [--temperature 1.0]

Samples ``k`` answers (temperature 1, the quickstart's rollout setting) to every question of the split, scores each
by exact match (IoU >= 0.5 for a box, ``shapes_answer``'s ``answer_correct``), and prints per type the sample
accuracy, pass@k, and the shares of questions whose k answers are all wrong or all right: such groups have equal
rewards and carry no policy gradient. A type whose sample accuracy is chance (count 1/5, yes/no 1/2) has headroom in
pass@k only by guessing.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from visalign.eval.pass_at_k import pass_at_k
    from visalign.models.loading import resolve_model_path
    from visalign.models.vlm import encode_question, vlm_forbidden_ids, vlm_forward
    from visalign.models.vlm_loading import load_vlm
    from visalign.pretrain.vlm.evaluation import score_answers
    from visalign.token_rollout import TokenRolloutPlan, run_token_rollout
    from visalign.worlds.shapes.questions import load_qa_split

    torch.set_num_threads(args.threads)
    items = load_qa_split(args.split)
    model, processor = load_vlm(resolve_model_path(args.model))  # a folder or the shipped alias shapes-vlm
    tok = processor.tokenizer
    plan = TokenRolloutPlan(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            forbidden_token_ids=vlm_forbidden_ids(tok), batch_size=256)
    repeated = [item for item in items for _ in range(args.k)]
    encoded = {id(item): encode_question(processor, item) for item in items}
    rows = [encoded[id(item)] for item in repeated]
    rollout = run_token_rollout(model, tok, [r[0] for r in rows], [""] * len(repeated), repeated,
                                torch.arange(len(repeated)), list(range(len(repeated))), plan, [r[1] for r in rows],
                                vlm_forward)
    correct = score_answers(repeated, rollout.completions)["correct"]
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_type[item["type"]].append(int(sum(correct[i * args.k : (i + 1) * args.k])))
    by_type["overall"] = [c for kind in list(by_type) for c in by_type[kind]]
    out = {}
    for kind, counts in by_type.items():
        n = len(counts)
        out[kind] = {"sample_accuracy": sum(counts) / (args.k * n),
                     f"pass@{args.k}": sum(pass_at_k(args.k, c, args.k) for c in counts) / n,
                     "all_wrong": sum(c == 0 for c in counts) / n, "all_right": sum(c == args.k for c in counts) / n}
        print(f"{kind:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in out[kind].items()))
    return out


if __name__ == "__main__":
    main()
