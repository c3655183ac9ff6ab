"""Rollouts of a token policy (a language or vision-language model answering prompts): sampled answers with the
per-token log-probs that the GRPO family's ratios are taken against.

Layout. A batch is ``[prompt | completion]``: prompts left-padded to a common length P (so that every answer starts
at column P), completions right-padded to C. ``completion_mask[i, t]`` is 1 on the answer's tokens, up to and
including its end-of-sequence token, and 0 on the padding after it.

Sampling goes through transformers' ``generate`` (temperature, top-p, ``max_new_tokens``, ``stop_strings``), with
``forbidden_token_ids`` (image placeholders, vision delimiters, padding) removed from the vocabulary by
``bad_words_ids``, so that they can never be sampled into an answer. Its random draws come from the global RNG,
seeded (inside ``fork_rng``) from the chunk's sample seeds: a resumed run repeats an uninterrupted one.

Log-probs. The stored ``old_log_probs`` are not ``generate``'s scores: they are a teacher-forced forward pass over the
sampled sequences with ``log_softmax(logits / temperature)``, the same computation (``completion_log_probs``) that
training differentiates, so the first inner step of an iteration is on-policy (ratio 1) by construction and
independently of how the batch was padded (a test checks |log ratio| < 1e-5 against each sequence scored alone).
As in TRL, the log-prob is that of the temperature-scaled distribution before top-p truncation.
Position ids come from the attention mask (``forward`` below), so left padding does not shift a sequence's positions;
a model that derives its own positions from the mask (Qwen2-VL's multimodal rotary positions) gets its own
``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visalign.seeding import seed_from_key

Forward = Callable[[Any, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def causal_lm_forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      extra: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``[B, L, V]`` of a causal LM with position ids counted over the unpadded tokens (as ``generate``
    counts them), so a left-padded row sees the positions it would see alone."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra).logits


@dataclass(frozen=True)
class TokenRolloutPlan:
    """How answers are sampled (the config's ``sampling`` section for token policies)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    forbidden_token_ids: tuple[int, ...] = ()  # never sampled: image placeholders, vision delimiters, padding
    batch_size: int = 0  # sequences per generate call (0: all)


@dataclass
class TokenRollout:
    """N sampled answers: ids, masks and the log-probs the rollout policy gave each answer token."""

    prompts: list[str]
    metadata: list[dict[str, Any]]
    prompt_ids: torch.Tensor  # [N] index of the prompt within the iteration's global prompt batch
    group_ids: torch.Tensor  # [N]
    seeds: torch.Tensor  # [N] int64
    input_ids: torch.Tensor  # [N, P + C]
    attention_mask: torch.Tensor  # [N, P + C]
    prompt_length: int  # P
    completion_mask: torch.Tensor  # [N, C] 1 on answer tokens (end-of-sequence included)
    old_log_probs: torch.Tensor  # [N, C] float32, 0 where the mask is 0
    completions: list[str]  # the decoded answers
    extra: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per-sample model inputs (pixel values...)
    advantages: torch.Tensor | None = None  # [N], set by the trainer
    mask: torch.Tensor | None = None  # [N] bool, set by the trainer
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def completion_tokens(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]

    @property
    def outputs(self) -> list[str]:
        """What the rewards score: the answers."""
        return self.completions

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def token_batch(self, indices: torch.Tensor) -> TokenBatch:
        if self.advantages is None or self.mask is None:
            raise RuntimeError("advantages must be set before training on a rollout")
        i = indices
        return TokenBatch(
            input_ids=self.input_ids[i], attention_mask=self.attention_mask[i], prompt_length=self.prompt_length,
            completion_mask=self.completion_mask[i], old_log_probs=self.old_log_probs[i],
            advantages=self.advantages[i], mask=self.mask[i], extra=collate_extra([self.extra[j] for j in i.tolist()]),
        )


@dataclass
class TokenBatch:
    """A minibatch of answers: what a token algorithm's ``loss`` receives."""

    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    prompt_length: int
    completion_mask: torch.Tensor  # [B, C]
    old_log_probs: torch.Tensor  # [B, C]
    advantages: torch.Tensor  # [B]
    mask: torch.Tensor  # [B] bool: False for members of zero-variance groups
    extra: dict[str, torch.Tensor]


def collate_extra(extra: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-sample model inputs concatenated along their first dimension (Qwen2-VL's ``pixel_values`` is
    ``[patches, D]`` per image and ``image_grid_thw`` ``[1, 3]``: both concatenate)."""
    if not extra or not extra[0]:
        return {}
    return {k: torch.cat([e[k] for e in extra]) for k in extra[0]}


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) ``[B, P]`` with each sequence right-aligned."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def completion_mask(completions: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int) -> torch.Tensor:
    """1 on each answer's tokens up to and including its first end-of-sequence token; 0 after it, and on the
    padding ``generate`` appends to a sequence that stopped early (padding is never sampled: it is forbidden)."""
    eos = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    is_eos = torch.isin(completions, eos)
    ended_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = ~ended_before
    if int(pad_token_id) not in eos.tolist():
        mask &= completions != pad_token_id
    return mask.long()


def gather_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` at ``tokens``, in float32: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]``."""
    scaled = logits.float() / temperature
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def completion_log_probs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
                         extra: dict[str, torch.Tensor], temperature: float = 1.0,
                         forward: Forward = causal_lm_forward) -> torch.Tensor:
    """Teacher-forced log-probs ``[B, C]`` of the completion tokens (columns ``prompt_length`` onwards): the logits
    at column j predict the token at j + 1."""
    logits = forward(model, input_ids, attention_mask, extra)
    return gather_log_probs(logits[:, prompt_length - 1 : -1], input_ids[:, prompt_length:], temperature)


def _chunk_seed(seeds: Sequence[int]) -> int:
    return seed_from_key("generate:" + ",".join(str(int(s)) for s in seeds))


@torch.no_grad()
def run_token_rollout(
    model: Any,
    tokenizer: Any,
    prompt_tokens: Sequence[Sequence[int]],
    prompts: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    prompt_ids: torch.Tensor,
    seeds: Sequence[int],
    plan: TokenRolloutPlan | None = None,
    extra: Sequence[dict[str, torch.Tensor]] | None = None,
    forward: Forward = causal_lm_forward,
) -> TokenRollout:
    """Sample one answer per prompt (``prompt_tokens``: each prompt's token ids, chat template applied) and score it
    teacher-forced; ``extra`` holds each sample's further model inputs (e.g. its image's pixel values)."""
    plan = plan or TokenRolloutPlan()
    n = len(prompt_tokens)
    extra = list(extra) if extra is not None else [{} for _ in range(n)]
    pad, eos = int(tokenizer.pad_token_id), tokenizer.eos_token_id
    ids, attn = left_pad(prompt_tokens, pad)
    forbidden = sorted(set(plan.forbidden_token_ids) | ({pad} if pad != eos else set()))
    chunk = plan.batch_size if plan.batch_size > 0 else n
    # greedy takes no sampling flags (generate warns about them); sampling keeps the whole vocabulary (top_k 0)
    sampling = ({"do_sample": True, "temperature": plan.temperature, "top_p": plan.top_p, "top_k": 0}
                if plan.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    completions: list[torch.Tensor] = []
    for s in range(0, n, chunk):
        rows = slice(s, min(s + chunk, n))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_chunk_seed(seeds[rows]))
            out = model.generate(
                input_ids=ids[rows], attention_mask=attn[rows], **collate_extra(extra[rows]),
                **sampling, max_new_tokens=plan.max_new_tokens,
                stop_strings=list(plan.stop_strings) or None, tokenizer=tokenizer if plan.stop_strings else None,
                bad_words_ids=[[t] for t in forbidden] or None, pad_token_id=pad, eos_token_id=eos,
            )
        completions.append(out[:, ids.shape[1] :])
    width = max(c.shape[1] for c in completions)
    tokens = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad) for c in completions])
    cmask = completion_mask(tokens, eos, pad)
    input_ids = torch.cat([ids, tokens], dim=1)
    attention = torch.cat([attn, cmask], dim=1)
    old = torch.cat([
        completion_log_probs(model, input_ids[rows], attention[rows], ids.shape[1], collate_extra(extra[rows]),
                             plan.temperature if plan.temperature > 0 else 1.0, forward)
        for rows in (slice(s, min(s + chunk, n)) for s in range(0, n, chunk))
    ])
    texts = [tokenizer.decode(t[m.bool()], skip_special_tokens=True) for t, m in zip(tokens, cmask, strict=True)]
    return TokenRollout(
        prompts=list(prompts), metadata=list(metadata), prompt_ids=prompt_ids.clone(), group_ids=prompt_ids.clone(),
        seeds=torch.tensor([int(x) for x in seeds], dtype=torch.int64), input_ids=input_ids,
        attention_mask=attention, prompt_length=ids.shape[1], completion_mask=cmask,
        old_log_probs=old * cmask, completions=texts, extra=extra,
    )


class TokenRollouts:
    """The rollout engine of a token policy (``rollout_engines``): the config's sampling settings as a
    ``TokenRolloutPlan``; one ``run_token_rollout`` per iteration; held-out evaluation with greedy answers."""

    def __init__(self, generator: Any, cfg: Any, algorithm: Any) -> None:
        s = cfg.sampling
        self.generator = generator
        self.plan = TokenRolloutPlan(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                     stop_strings=tuple(s.stop_strings),
                                     forbidden_token_ids=tuple(generator.forbidden_token_ids()),
                                     batch_size=s.batch_size)

    def context(self) -> dict[str, Any]:
        return {"max_new_tokens": self.plan.max_new_tokens}

    def _run(self, items: Sequence[dict[str, Any]], prompt_ids: torch.Tensor, seeds: Sequence[int],
             plan: TokenRolloutPlan) -> TokenRollout:
        g = self.generator
        tokens, extra = g.encode_items(items)
        return run_token_rollout(g.network(), g.tokenizer, tokens, [m["prompt"] for m in items], items, prompt_ids,
                                 seeds, plan, extra, type(g).forward)

    def rollout(self, iteration: int, algorithm: Any, items: Sequence[dict[str, Any]], prompt_ids: torch.Tensor,
                seeds: Sequence[int]) -> TokenRollout:
        return self._run(items, prompt_ids, seeds, self.plan)

    def evaluate(self, cfg: Any, items: Sequence[dict[str, Any]], out_dir: Any,
                 rewards: Sequence[tuple[Any, float]]) -> dict[str, Any]:
        """Greedy answers to the held-out prompts, scored by the run's rewards: ``overall`` is the exact-match
        accuracy where the first reward reports one (its ``answer_correct`` component, the pass / fail view: IoU >=
        0.5 for a box), else the first reward's mean; ``per_tag`` the same per item ``type`` (or ``tag``);
        ``held_out`` over the items on combinations held out of train. Writes ``results.json`` and
        ``answers.jsonl`` (one line per item, in order: the paired comparisons of ``visalign.eval`` read it)."""
        import json
        import time
        from dataclasses import replace
        from pathlib import Path

        from visalign.prompts import stratified
        from visalign.rewards.scoring import reward_name, score_outputs

        t0 = time.perf_counter()
        chosen = stratified(list(items), cfg.eval.max_prompts) if cfg.eval.max_prompts else list(items)
        ids = torch.arange(len(chosen))
        ro = self._run(chosen, ids, [0] * len(chosen), replace(self.plan, temperature=0.0))
        scores = score_outputs(rewards, ro.outputs, ro.prompts, ro.metadata, ids)
        first = reward_name(rewards[0][0]) if rewards else None
        if first is not None and f"{first}/answer_correct" in scores:  # exact match: the pass / fail component
            main = scores[f"{first}/answer_correct"]
        else:
            main = scores[first] if first is not None else torch.zeros(len(chosen))
        tags = [str(m.get("type", m.get("tag", ""))) for m in chosen]
        per_tag = {t: float(main[torch.tensor([x == t for x in tags])].mean()) for t in dict.fromkeys(tags) if t}
        result = {"overall": float(main.mean()), "per_tag": per_tag,
                  "rewards": {k: float(v.mean()) for k, v in scores.items()}, "n": len(chosen),
                  "seconds": time.perf_counter() - t0}
        held = torch.tensor([bool(m.get("held_out")) for m in chosen])
        if bool(held.any()):
            result["held_out"] = float(main[held].mean())
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "answers.jsonl", "w") as f:
            for item, answer, score, tag in zip(chosen, ro.completions, main.tolist(), tags, strict=True):
                row = {"prompt": item["prompt"], "type": tag, "answer": answer, "score": score,
                       "target": item.get("answer")}
                if isinstance(item.get("image"), dict):  # a world's image spec (a report renders it again)
                    row["image"] = item["image"]
                f.write(json.dumps(row) + "\n")
        (out / "results.json").write_text(json.dumps(result, indent=1))
        return result
