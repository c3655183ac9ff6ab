"""The tiny VLM's test-split score: greedy answers, exact match (IoU >= 0.5 for a box), per question type.

Answers come from ``token_rollout.run_token_rollout`` at temperature 0, the path RL evaluation takes, with the
family's forbidden tokens, so the card's number is the number a run's base evaluation reproduces. Scores are
``shapes_answer``'s ``answer_correct`` component.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visalign.models.vlm import encode_question, vlm_forbidden_ids, vlm_forward
from visalign.token_rollout import TokenRolloutPlan, run_token_rollout


def greedy_answers(model: Any, processor: Any, items: Sequence[dict[str, Any]], max_new_tokens: int = 24,
                   batch_size: int = 64) -> list[str]:
    """The model's greedy answer to every item."""
    tok = processor.tokenizer
    plan = TokenRolloutPlan(max_new_tokens=max_new_tokens, temperature=0.0,
                            forbidden_token_ids=vlm_forbidden_ids(tok), batch_size=batch_size)
    answers: list[str] = []
    was_training = model.training
    model.eval()
    for s in range(0, len(items), batch_size):
        chunk = list(items[s : s + batch_size])
        encoded = [encode_question(processor, item) for item in chunk]
        ids = torch.arange(len(chunk))
        rollout = run_token_rollout(model, tok, [e[0] for e in encoded], [""] * len(chunk), chunk, ids,
                                    [0] * len(chunk), plan, [e[1] for e in encoded], vlm_forward)
        answers += rollout.completions
    model.train(was_training)
    return answers


def score_answers(items: Sequence[dict[str, Any]], answers: Sequence[str]) -> dict[str, Any]:
    """``overall`` exact-match accuracy, ``per_type``, and ``held_out`` / ``seen`` (items on combinations held
    out of train, and the others), with the per-item verdicts (``correct``)."""
    from visalign.rewards.answers import ShapesAnswer
    from visalign.worlds.shapes.questions_phrasings import QUESTION_TYPES

    correct = ShapesAnswer().score(list(answers), [""] * len(items), list(items))["answer_correct"].tolist()

    def mean(select: Sequence[bool]) -> float | None:
        values = [c for c, s in zip(correct, select, strict=True) if s]
        return sum(values) / len(values) if values else None

    types = [item.get("type") for item in items]
    per_type = {t: mean([x == t for x in types]) for t in QUESTION_TYPES if t in types}
    held = [bool(item.get("held_out")) for item in items]
    return {"overall": mean([True] * len(items)), "per_type": per_type, "held_out": mean(held),
            "seen": mean([not h for h in held]), "n": len(items), "correct": correct}
