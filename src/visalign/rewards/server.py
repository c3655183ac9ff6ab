"""HTTP server for any registered reward, with request batching (``visalign serve-reward``).

Concurrent ``/score`` requests are queued; a single worker thread takes the oldest one and, for up to
``max_wait_s``, coalesces further queued requests with the same image size until ``max_batch`` images
are gathered, scores them in one reward call and hands each request its slice. Groupwise rewards (whose
scores depend on the whole request) are never coalesced, and a request larger than ``max_batch`` is
scored alone. If a coalesced call fails, each of its requests is scored again on its own, so one bad
request cannot fail the others. The wire format is in ``wire.py``. Security: loopback by default; an optional bearer token
compared in constant time; bodies over ``max_body_bytes`` and batches over ``max_request_images`` are
refused before decoding.
"""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from visalign.rewards.base import Reward
from visalign.rewards.wire import WireError, decode_request, encode_scores


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
        self._thread = threading.Thread(target=self._loop, name=f"score-{reward.name}", daemon=True)
        self._thread.start()

    def submit(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> Future:
        job = _Job(images, prompts, metadata)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
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


class _Handler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/health":
            self._reply(404, {"error": f"unknown path {self.path}"})
            return
        r, s = self.server.reward, self.server.scorer
        self._reply(200, {
            "status": "ok", "reward": r.name, "differentiable": r.differentiable, "groupwise": r.groupwise,
            "output_range": list(r.output_range), "requests": s.requests, "batches": s.batches,
        })  # fmt: skip

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        if self.path.rstrip("/") != "/score":
            self._reply(404, {"error": f"unknown path {self.path}"})
            return
        if srv.token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {srv.token}".encode()):
                self._reply(401, {"error": "missing or wrong bearer token"})
                return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._reply(411, {"error": "Content-Length required"})
            return
        if int(length) > srv.max_body_bytes:
            self._reply(413, {"error": f"body of {length} bytes exceeds {srv.max_body_bytes}"})
            return
        raw = self.rfile.read(int(length))
        try:
            images, prompts, metadata = decode_request(json.loads(raw), srv.max_request_images)
        except (WireError, json.JSONDecodeError, UnicodeDecodeError) as err:
            status = 413 if "too many images" in str(err) else 400
            self._reply(status, {"error": str(err)})
            return
        if srv.closing:
            self._reply(503, {"error": "server is shutting down"})
            return
        try:
            scores = srv.scorer.submit(images, prompts, metadata).result(timeout=srv.request_timeout_s)
        except Exception as err:  # noqa: BLE001
            self._reply(500, {"error": f"reward '{srv.reward.name}' failed: {type(err).__name__}: {err}"})
            return
        self._reply(200, encode_scores(srv.reward.name, scores))


class RewardHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving one reward; see the module docstring and ``wire.py``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog (socketserver's default of 5 drops bursts of concurrent clients)

    def __init__(
        self,
        reward: Reward,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_body_bytes: int = 64 * 2**20,
        max_request_images: int = 256,
        request_timeout_s: float = 600.0,
        verbose: bool = False,
    ) -> None:
        self.reward = reward
        self.token = token or None
        self.max_body_bytes = max_body_bytes
        self.max_request_images = max_request_images
        self.request_timeout_s = request_timeout_s
        self.verbose = verbose
        self.closing = False
        self.scorer = BatchingScorer(reward, max_batch=max_batch, max_wait_s=max_wait_s)
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{self.port}"

    def start(self) -> RewardHTTPServer:
        """Serve on a background thread (tests, benchmarks, in-process use)."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests, finish the worker, close the socket."""
        self.closing = True
        if self._thread is not None:  # shutdown() waits for serve_forever, which only runs after start()
            self.shutdown()
        self.server_close()
        self.scorer.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
