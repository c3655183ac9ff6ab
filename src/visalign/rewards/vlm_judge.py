"""VLM-as-judge rewards over an OpenAI-compatible chat API (as served by vLLM or SGLang).

* ``vlm_yes`` (pointwise, UnifiedReward-style question): the judge sees the image and a yes/no question
  about the prompt and answers one token; the reward is P(yes) = p_yes / (p_yes + p_no), read from the
  ``top_logprobs`` of that token (every spelling of "yes"/"no" summed, case and spaces ignored).
* ``vlm_pairwise`` (groupwise, Pref-GRPO, Wang et al., 2025, "Pref-GRPO"): for every pair (i, j) of the
  group the judge answers "1" or "2"; p_ij = P(first is better) (averaged with 1 - p_ji when
  ``both_orders``, which cancels the judge's position bias); i beats j if p_ij > 1/2 + tie_margin, loses if
  p_ij < 1/2 - tie_margin, else a tie. The reward is the win rate
  ``r_i = mean_{j != i} [1(i > j) + 1/2 1(tie)]`` (in [0, 1]; the mean of a group's win rates is 1/2).

Requests: ``POST {base_url}/chat/completions`` with ``max_tokens=1``, ``temperature=0``, ``logprobs=true``,
``top_logprobs`` (default 20); images as ``data:image/png;base64`` URLs. A reply whose top tokens contain
neither answer raises ``RewardError``: no score is made up. Not differentiable.
"""

from __future__ import annotations

import base64
import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from visalign.rewards._http import post_json
from visalign.rewards._images import png_bytes, to_uint8
from visalign.rewards.base import Reward, RewardError, register_reward

POINTWISE_TEMPLATE = (
    "You are given a text caption and a generated image based on that caption. Your task is to judge "
    "whether the image faithfully shows everything the caption describes (objects, counts, colours, "
    "positions, text) and is of good visual quality.\nCaption: {prompt}\n"
    "Does the image match the caption? Answer with a single word: Yes or No."
)
PAIRWISE_TEMPLATE = (
    "You are given a text caption and two images generated from it, Image 1 and Image 2. Judge which image "
    "better matches the caption (objects, counts, colours, positions, text) and has better visual quality.\n"
    "Caption: {prompt}\nWhich image is better? Answer with a single character: 1 or 2."
)


def _data_url(array: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(array)).decode("ascii")


def answer_probability(reply: Any, positive: str, negative: str) -> float:
    """p(positive) / (p(positive) + p(negative)) from the first generated token's ``top_logprobs``."""
    try:
        top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError) as err:
        raise RewardError(f"VLM judge reply has no logprobs (is logprobs supported by the server?): {err}") from err
    p_pos = p_neg = 0.0
    for item in top:
        token = str(item.get("token", "")).strip().lower()
        logprob = float(item.get("logprob", -math.inf))
        if token == positive:
            p_pos += math.exp(logprob)
        elif token == negative:
            p_neg += math.exp(logprob)
    if p_pos + p_neg == 0.0:
        seen = [str(i.get("token")) for i in top][:5]
        raise RewardError(f"VLM judge answered neither '{positive}' nor '{negative}' (top tokens {seen})")
    return p_pos / (p_pos + p_neg)


def win_rates(outcome: torch.Tensor) -> torch.Tensor:
    """Pref-GRPO win rate from an outcome matrix: ``outcome[i, j]`` = 1 (i beats j), 1/2 (tie), 0 (loses).

    ``r_i = mean_{j != i} outcome[i, j]``; the diagonal is ignored.
    """
    n = outcome.shape[0]
    if n < 2:
        raise RewardError("a pairwise win rate needs a group of at least 2 images")
    off = ~torch.eye(n, dtype=torch.bool)
    return (outcome.float() * off).sum(1) / (n - 1)


class _Judge(Reward):
    differentiable = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        template: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        top_logprobs: int = 20,
        max_concurrency: int = 8,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.template = template
        self.timeout, self.retries, self.backoff_s = float(timeout), int(retries), float(backoff_s)
        self.top_logprobs = int(top_logprobs)
        self.max_concurrency = int(max_concurrency)

    def _ask(self, image_urls: list[str], text: str) -> Any:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
        content.append({"type": "text", "text": text})
        payload = {
            "model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 1,
            "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs,
        }  # fmt: skip
        return post_json(self.name, self.url, payload, token=self.api_key, timeout=self.timeout,
                         retries=self.retries, backoff_s=self.backoff_s)  # fmt: skip

    def _map(self, fn: Any, items: list[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(items)))) as pool:
            return list(pool.map(fn, items))


@register_reward("vlm_yes")
class VLMPointwise(_Judge):
    """P("yes") of an OpenAI-compatible VLM judge; ``base_url`` like ``http://127.0.0.1:8000/v1``."""

    name = "vlm_yes"
    summary = "VLM judge P(yes) from logprobs (OpenAI-compatible API)"
    groupwise = False
    output_range = (0.0, 1.0)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        urls = [_data_url(a) for a in to_uint8(images)]
        template = self.template or POINTWISE_TEMPLATE

        def one(i: int) -> float:
            reply = self._ask([urls[i]], template.format(prompt=prompts[i]))
            return answer_probability(reply, "yes", "no")

        return {self.name: torch.tensor(self._map(one, list(range(len(urls)))), dtype=torch.float32)}


@register_reward("vlm_pairwise")
class VLMPairwise(_Judge):
    """Pref-GRPO win rate within a group (groupwise: pass one group of images of one prompt at a time)."""

    name = "vlm_pairwise"
    summary = "VLM pairwise judge, Pref-GRPO win rate (groupwise)"
    groupwise = True
    output_range = (0.0, 1.0)

    def __init__(self, *args: Any, both_orders: bool = True, tie_margin: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.both_orders, self.tie_margin = bool(both_orders), float(tie_margin)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        if len(set(prompts)) != 1:
            raise RewardError("reward 'vlm_pairwise' is groupwise: pass the images of one prompt at a time")
        n = images.shape[0]
        if n < 2:
            raise RewardError("reward 'vlm_pairwise' needs a group of at least 2 images")
        urls = [_data_url(a) for a in to_uint8(images)]
        text = (self.template or PAIRWISE_TEMPLATE).format(prompt=prompts[0])
        pairs = list(itertools.permutations(range(n), 2) if self.both_orders else itertools.combinations(range(n), 2))
        probs = self._map(lambda ij: answer_probability(self._ask([urls[ij[0]], urls[ij[1]]], text), "1", "2"), pairs)
        first = dict(zip(pairs, probs, strict=True))
        outcome = torch.zeros(n, n)
        for i, j in itertools.combinations(range(n), 2):
            p = (first[(i, j)] + 1.0 - first[(j, i)]) / 2 if self.both_orders else first[(i, j)]
            if p > 0.5 + self.tie_margin:
                outcome[i, j], outcome[j, i] = 1.0, 0.0
            elif p < 0.5 - self.tie_margin:
                outcome[i, j], outcome[j, i] = 0.0, 1.0
            else:
                outcome[i, j] = outcome[j, i] = 0.5
        return {self.name: win_rates(outcome), f"{self.name}/p_first_mean": torch.full((n,), sum(probs) / len(probs))}
