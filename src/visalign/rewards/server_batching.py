"""The reward server's scorer: one worker thread that scores queued requests, coalescing them into batches.

The worker takes the oldest queued job and, for up to ``max_wait_s``, coalesces further queued jobs with the
same image size until ``max_batch`` images are gathered, scores them in one reward call and hands each job its
slice. Groupwise rewards (whose scores depend on the whole request) are never coalesced, and a job larger
than ``max_batch`` is scored alone. If a coalesced call fails, each of its jobs is scored again on its own,
so one bad request cannot fail the others.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from visalign.rewards.base import Reward


class ScorerClosed(RuntimeError):
    """The scorer was closed (the server is shutting down) before this job could be scored."""


@dataclass
class _Job:
    images: torch.Tensor
    prompts: list[str]
    metadata: list[dict[str, Any]]
    future: Future = field(default_factory=Future)


class BatchingScorer:
    """One worker thread that scores queued jobs, coalescing them up to ``max_batch`` images."""

    def __init__(self, reward: Reward, max_batch: int = 16, max_wait_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.reward, self.max_batch, self.max_wait_s = reward, max_batch, max_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # a job taken from the queue that did not fit the last batch
        self.requests = 0
        self.batches = 0
        self._closed = False
        self._lock = threading.Lock()  # orders submit() against close(): no job is queued behind the stop marker
        self._thread = threading.Thread(target=self._loop, name=f"score-{reward.name}", daemon=True)
        self._thread.start()

    def submit(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> Future:
        job = _Job(images, prompts, metadata)
        with self._lock:
            if self._closed:
                job.future.set_exception(ScorerClosed(f"reward '{self.reward.name}' is no longer being served"))
            else:
                self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Score what is queued, then stop the worker; later submissions fail with ``ScorerClosed``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=10)

    def _next(self, timeout: float | None) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = [first]
            size = first.images.shape[0]
            deadline = time.monotonic() + self.max_wait_s
            while not self.reward.groupwise and size < self.max_batch:
                try:
                    job = self._next(max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                fits = job.images.shape[1:] == first.images.shape[1:] and size + job.images.shape[0] <= self.max_batch
                if not fits:
                    self._held = job
                    break
                batch.append(job)
                size += job.images.shape[0]
            self._score(batch)

    def _score(self, batch: list[_Job]) -> None:
        self.requests += len(batch)
        self.batches += 1
        try:
            images = torch.cat([j.images for j in batch]) if len(batch) > 1 else batch[0].images
            prompts = [p for j in batch for p in j.prompts]
            metadata = [m for j in batch for m in j.metadata]
            with torch.no_grad():
                scores = self.reward(images, prompts, metadata)
        except Exception as err:  # noqa: BLE001 - every waiting request must hear about the failure
            if len(batch) > 1:  # isolate the culprit: one bad request must not fail the others
                self.requests -= len(batch)
                for job in batch:
                    self._score([job])
            else:
                batch[0].future.set_exception(err)
            return
        start = 0
        for job in batch:
            n = job.images.shape[0]
            job.future.set_result({k: v[start : start + n] for k, v in scores.items()})
            start += n
