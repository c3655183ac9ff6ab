"""A reward computed by a server over HTTP (``visalign serve-reward``, or any server speaking ``wire.py``).

This is how rewards with heavy or conflicting dependencies run: GenEval (an mmdetection detector), OCR
engines, large VLM judges, or any reward on another machine (the pattern of ddpo-pytorch and Flow-GRPO).
Each call sends the batch as PNGs; on a connection error, a timeout, HTTP 429 or 5xx it retries
``retries`` times with exponential backoff (``backoff_s * 2**attempt``), then raises ``RewardError``
naming the URL and the last error. A 4xx other than 429, or a redirect, fails at once. Scores are never invented:
a response that is not ``B`` finite numbers per key is an error.

Batches: a call's images go out in requests of at most ``max_images`` (default 64; the server refuses more than
its ``--max-request-images``, 256 by default, and more than its pixel limit), so a whole rollout (the GenEval
recipe scores 1,152 images of 512 x 512 at once) fits the server's limits. A groupwise reward's call is one group
and is sent whole.

Proxies: a loopback ``url`` is always reached directly. For another host, ``proxy=None`` (the default)
connects directly too and ignores ``http_proxy`` / ``https_proxy``: a request carries the images and the
bearer token, and a plain-http proxy sees both. ``proxy="env"`` uses the environment's proxies (and
``no_proxy``); ``proxy="http://host:port"`` uses that proxy. Redirects are refused, not followed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from visalign.rewards._http import check_proxy, post_json
from visalign.rewards.base import Reward, RewardError, register_reward
from visalign.rewards.wire import WireError, decode_scores, encode_request

TOKEN_ENV = "VISALIGN_REWARD_TOKEN"


@register_reward("remote")
class RemoteReward(Reward):
    """``url``: server root (``http://127.0.0.1:8000``); ``token``: bearer token (default ``$VISALIGN_REWARD_TOKEN``);
    ``proxy``: ``None`` (direct), ``"env"`` or a proxy URL, never used for loopback; ``max_images``: images per
    request (module docstring)."""

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
        proxy: str | None = None,
        max_images: int = 64,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise RewardError(f"reward 'remote': url must start with http:// or https://, got '{url}'")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout, self.retries, self.backoff_s = float(timeout), int(retries), float(backoff_s)
        self.groupwise = bool(groupwise)  # type: ignore[misc]  (the served reward decides; say so here)
        self.proxy = check_proxy(self.name, proxy)
        if int(max_images) < 1:
            raise RewardError(f"reward 'remote': max_images must be >= 1, got {max_images}")
        self.max_images = int(max_images)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        step = len(prompts) if self.groupwise else self.max_images  # a group is scored as one request
        parts = [self._request(images[i : i + step], prompts[i : i + step], metadata[i : i + step])
                 for i in range(0, len(prompts), max(step, 1))]
        if len(parts) == 1:
            return parts[0]
        if any(p.keys() != parts[0].keys() for p in parts):
            raise RewardError(f"reward 'remote': {self.url} answered the parts of one batch with different keys")
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _request(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        payload = post_json(
            self.name, f"{self.url}/score", encode_request(images, prompts, metadata), token=self.token,
            timeout=self.timeout, retries=self.retries, backoff_s=self.backoff_s, proxy=self.proxy,
        )  # fmt: skip
        try:
            return decode_scores(payload, len(prompts))
        except WireError as err:
            raise RewardError(f"reward 'remote': {self.url} sent an invalid response: {err}") from err
