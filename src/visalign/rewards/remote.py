"""A reward computed by a server over HTTP (``visalign serve-reward``, or any server speaking ``wire.py``).

This is how rewards with heavy or conflicting dependencies run: GenEval (an mmdetection detector), OCR
engines, large VLM judges, or any reward on another machine (the pattern of ddpo-pytorch and Flow-GRPO).
Each call sends the batch as PNGs; on a connection error, a timeout, HTTP 429 or 5xx it retries
``retries`` times with exponential backoff (``backoff_s * 2**attempt``), then raises ``RewardError``
naming the URL and the last error. A 4xx other than 429 fails at once. Scores are never invented:
a response that is not ``B`` finite numbers per key is an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from visalign.rewards._http import post_json
from visalign.rewards.base import Reward, RewardError, register_reward
from visalign.rewards.wire import WireError, decode_scores, encode_request

TOKEN_ENV = "VISALIGN_REWARD_TOKEN"


@register_reward("remote")
class RemoteReward(Reward):
    """``url``: server root (``http://127.0.0.1:8000``); ``token``: bearer token (default ``$VISALIGN_REWARD_TOKEN``)."""

    name = "remote"
    summary = "any reward served over HTTP (serve-reward; GenEval server)"
    differentiable = False
    groupwise = False
    output_range = (float("-inf"), float("inf"))

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        groupwise: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise RewardError(f"reward 'remote': url must start with http:// or https://, got '{url}'")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout, self.retries, self.backoff_s = float(timeout), int(retries), float(backoff_s)
        self.groupwise = bool(groupwise)  # type: ignore[misc]  (the served reward decides; say so here)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        payload = post_json(
            self.name, f"{self.url}/score", encode_request(images, prompts, metadata), token=self.token,
            timeout=self.timeout, retries=self.retries, backoff_s=self.backoff_s,
        )  # fmt: skip
        try:
            return decode_scores(payload, len(prompts))
        except WireError as err:
            raise RewardError(f"reward 'remote': {self.url} sent an invalid response: {err}") from err
