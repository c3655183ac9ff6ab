"""Score rewards on a worker thread, so the engine can overlap reward computation with the next rollout.

    scorer = AsyncRewardScorer(reward)
    future = scorer.submit(images, prompts, metadata)   # returns at once
    ... next rollout ...
    scores = future.result()                            # {name: tensor[B]}, checked like a direct call

The images are detached and copied at submission (so later in-place edits of the rollout buffers cannot
change what is scored); for that reason the asynchronous path is for non-differentiable use only.
Exceptions raised by the reward are re-raised by ``future.result()``. Torch releases the GIL inside its
kernels and HTTP rewards wait on sockets, so the overlap is real even with threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from visalign.rewards.base import Reward


class AsyncRewardScorer:
    """Submit reward calls to ``max_workers`` background threads (default 1: calls run in submission order)."""

    def __init__(self, reward: Reward, max_workers: int = 1) -> None:
        self.reward = reward
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"reward-{reward.name}")
        self._closed = False

    def submit(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> Future[dict[str, torch.Tensor]]:
        """Start scoring a batch; returns a ``Future`` of the reward's result dict."""
        if self._closed:
            raise RuntimeError("AsyncRewardScorer is closed")
        frozen = images.detach().clone()
        prompts = list(prompts)
        metadata = None if metadata is None else [dict(m) for m in metadata]
        return self._pool.submit(self._run, frozen, prompts, metadata)

    def _run(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.reward(images, prompts, metadata)

    def close(self, wait: bool = True) -> None:
        """Stop accepting work; with ``wait`` finish the calls already submitted."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> AsyncRewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
