"""HTTP server for any registered reward, with request batching (``visalign serve-reward``).

This module holds the request handler and the server class. Concurrent ``/score`` requests are queued
for one worker thread that coalesces them into batches (``server_batching.py``); what guards a connection
at the socket level (read deadlines, write timeouts, lingering close, the header budget) is in
``server_sockets.py``; the wire format is in ``wire.py``.

Limits and guarantees (each configurable; ``visalign serve-reward`` has a flag for each):

* security: loopback by default; an optional bearer token compared in constant time;
* bytes: bodies over ``max_body_bytes`` are refused (413) from their ``Content-Length``, before reading;
  the header lines of a request may hold ``MAX_HEADER_BYTES`` in all (431 beyond);
* pixels: every image's size is read from its PNG header, and a request with an image over
  ``max_image_pixels`` or images over ``max_request_pixels`` in all is refused (413) before any decoding,
  so a small, highly compressed PNG cannot make the server allocate gigabytes;
* time: the next request on a connection must start within ``idle_timeout_s`` (idle keep-alive
  connections are closed), and its headers and body must arrive within ``read_timeout_s`` (408 beyond);
  a reply must be taken by the client within ``read_timeout_s`` too. These are deadlines for the whole
  read, not per ``recv``, so a client trickling a byte at a time cannot hold a connection either;
* connections: at most ``max_connections`` are served at once, one thread each; the accept loop answers
  any further one at once with 503 (``Retry-After: 1``) instead of starting a thread;
* failures: every request that is read gets an HTTP reply (4xx for what the client sent, 500 naming the
  reward for what failed here); a client that goes away is dropped quietly; nothing prints a traceback.

A connection whose input may not have been read (every error reply) is closed by lingering
(``server_sockets.Lingerer``): a plain close could reset it before the client reads the reply, and the
client would then see "connection reset" and retry a request that was refused for a reason.
"""

from __future__ import annotations

import hmac
import io
import json
import socket
import sys
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from visalign.rewards.base import Reward
from visalign.rewards.server_batching import BatchingScorer, ScorerClosed
from visalign.rewards.server_sockets import (
    MAX_HEADER_BYTES,
    DeadlineReader,
    HeaderBudget,
    Lingerer,
    TimedWriter,
)
from visalign.rewards.wire import (
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    WireError,
    decode_request,
    encode_scores,
)

__all__ = ["MAX_HEADER_BYTES", "BatchingScorer", "RewardHTTPServer", "ScorerClosed"]


def _first_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Handler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def setup(self) -> None:
        self.connection = self.request
        self._input = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._input, 65536)
        self.wfile = TimedWriter(self.connection, self.server.read_timeout_s)
        self._replied = False

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Send one JSON reply, head and body in one write; an error reply closes the connection."""
        data = json.dumps(body).encode()
        self.log_request(status)
        phrase = self.responses.get(status, ("",))[0]
        head = [f"HTTP/1.1 {status} {phrase}", "Content-Type: application/json", f"Content-Length: {len(data)}",
                f"Date: {formatdate(usegmt=True)}"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if status >= 400:
            head.append("Connection: close")
            self.close_connection = True
            # the request's body may be unread: close without a reset, so that the client reads this reply
            self.server.linger_on_close(self.connection)
        self._replied = True
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    def _fail(self, status: int, message: str) -> None:
        """Reply with an error unless a reply went out already; a client that has gone away is let go."""
        self.close_connection = True
        if not self._replied:
            try:
                self._reply(status, {"error": message})
            except OSError:
                pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, header lines too long or too many, unknown method),
        # in the same JSON form as ours instead of an HTML page
        self.log_error("code %d, message %s", code, message)
        self._reply(code, {"error": _first_line(explain or message or self.responses.get(code, ("error",))[0])})

    def handle_expect_100(self) -> bool:
        # Refuse a request from its headers before inviting the client to send the body.
        problem = self._check_post() if self.command == "POST" else None
        if problem is not None:
            self._reply(*problem)
            return False
        return super().handle_expect_100()

    def handle_one_request(self) -> None:
        srv = self.server
        self._replied = False
        # The next request must start within the idle timeout; once it has, its headers and body must
        # arrive within the read timeout.
        self._input.deadline = time.monotonic() + srv.idle_timeout_s
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:  # idle past the timeout, or reset by the client: nothing to answer
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        self._input.deadline = time.monotonic() + srv.read_timeout_s
        try:
            if len(self.raw_requestline) > 65536:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414, "request line longer than 65536 bytes")
                return
            self.rfile, rfile = HeaderBudget(self.rfile, MAX_HEADER_BYTES), self.rfile  # type: ignore[assignment]
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = rfile
            if not parsed:
                return
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self._reply(405, {"error": f"unsupported method {_first_line(self.command, 40)!r}"},
                            {"Allow": "GET, POST"})  # fmt: skip
                return
            method()
        except TimeoutError:
            self._fail(408, f"request not received within {srv.read_timeout_s:g} s (the server's read timeout)")
        except OSError:  # the client went away (reset, broken pipe): nobody to answer
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 - a defect here must still get a reply and one log line
            what = f"{getattr(self, 'command', None) or '?'} {getattr(self, 'path', '?')!r}"  # may fail before parsing
            srv.log_line(f"error serving {what}: {type(err).__name__}: {err}")
            self._fail(500, f"reward server for '{srv.reward.name}' failed: {type(err).__name__}: {err}")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a GET with a body: do not read it as the next request
            self.server.linger_on_close(self.connection)
        if self.path.rstrip("/") != "/health":
            self._reply(404, {"error": f"unknown path {_first_line(self.path)}"})
            return
        r, s = self.server.reward, self.server.scorer
        self._reply(200, {
            "status": "ok", "reward": r.name, "differentiable": r.differentiable, "groupwise": r.groupwise,
            "output_range": list(r.output_range), "requests": s.requests, "batches": s.batches,
            "connections": self.server.connections, "refused_connections": self.server.refused,
        })  # fmt: skip

    def _check_post(self) -> tuple[int, dict[str, Any]] | None:
        """What the headers alone decide: path, token, body length. ``None`` if the body should be read."""
        srv = self.server
        if self.path.rstrip("/") != "/score":
            return 404, {"error": f"unknown path {_first_line(self.path)}"}
        if srv.token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {srv.token}".encode()):
                return 401, {"error": "missing or wrong bearer token"}
        if "Transfer-Encoding" in self.headers:
            return 411, {"error": "Transfer-Encoding is not supported: send the body with a Content-Length"}
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 411, {"error": "Content-Length required"}
        if len(values) > 1:  # two lengths: a proxy in front may have framed the body by the other one
            return 400, {"error": "conflicting Content-Length headers"}
        text = values.pop()
        if not (text.isascii() and text.isdigit()):  # isdigit() alone accepts '²', which int() rejects
            return 400, {"error": f"invalid Content-Length {_first_line(text, 40)!r}"}
        if len(text) > 18 or int(text) > srv.max_body_bytes:
            return 413, {"error": f"body of {_first_line(text, 40)} bytes exceeds the server's limit of "
                                  f"{srv.max_body_bytes:,} bytes"}  # fmt: skip
        self._length = int(text)
        return None

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        problem = self._check_post()
        if problem is not None:
            self._reply(*problem)
            return
        raw = self.rfile.read(self._length)  # TimeoutError past the read deadline: 408
        if len(raw) < self._length:  # the client closed its side mid-body; answer in case it still reads
            self._fail(400, f"body ended after {len(raw)} of {self._length} bytes")
            return
        try:
            payload = json.loads(raw)
        except RecursionError:
            self._reply(400, {"error": "body is not valid JSON: nested too deeply"})
            return
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
            self._reply(400, {"error": f"body is not valid JSON: {_first_line(str(err))}"})
            return
        try:
            images, prompts, metadata = decode_request(
                payload, srv.max_request_images, srv.max_image_pixels, srv.max_request_pixels
            )
        except WireError as err:
            self._reply(err.status, {"error": str(err)})
            return
        if srv.closing:
            self._reply(503, {"error": "server is shutting down"})
            return
        future = srv.scorer.submit(images, prompts, metadata)
        try:
            scores = future.result(timeout=srv.request_timeout_s)
        except ScorerClosed:
            self._reply(503, {"error": "server is shutting down"})
            return
        except Exception as err:  # noqa: BLE001
            if isinstance(err, FutureTimeout) and not future.done():  # (not a TimeoutError of the reward's own)
                message = f"reward '{srv.reward.name}' did not answer within {srv.request_timeout_s:g} s"
            else:
                message = f"reward '{srv.reward.name}' failed: {type(err).__name__}: {err}"
            self._reply(500, {"error": message})
            return
        self._reply(200, encode_scores(srv.reward.name, scores))


class RewardHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving one reward; see the module docstring and ``wire.py``."""

    daemon_threads = True
    block_on_close = False  # server_close() must not wait for the connections still open
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
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_request_pixels: int = MAX_REQUEST_PIXELS,
        max_connections: int = 64,
        idle_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        request_timeout_s: float = 600.0,
        linger_s: float = 2.0,
        verbose: bool = False,
    ) -> None:
        for what, value in (("max_body_bytes", max_body_bytes), ("max_request_images", max_request_images),
                            ("max_image_pixels", max_image_pixels), ("max_request_pixels", max_request_pixels),
                            ("max_connections", max_connections), ("idle_timeout_s", idle_timeout_s),
                            ("read_timeout_s", read_timeout_s), ("request_timeout_s", request_timeout_s)):  # fmt: skip
            if not value > 0:
                raise ValueError(f"reward server: {what} must be > 0, got {value}")
        self.reward = reward
        self.token = token or None
        self.max_body_bytes = max_body_bytes
        self.max_request_images = max_request_images
        self.max_image_pixels, self.max_request_pixels = max_image_pixels, max_request_pixels
        self.max_connections = max_connections
        self.idle_timeout_s, self.read_timeout_s = idle_timeout_s, read_timeout_s
        self.request_timeout_s = request_timeout_s
        self.verbose = verbose
        self.closing = False
        self.refused = 0  # connections answered 503 because max_connections were being served
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # connections being served
        self._lingering: set[socket.socket] = set()  # of those, the ones to close by lingering
        self._lingerer = Lingerer(linger_s)
        self.scorer = BatchingScorer(reward, max_batch=max_batch, max_wait_s=max_wait_s)
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self.scorer.close()
            self._lingerer.stop()
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections being served now (at most ``max_connections``)."""
        with self._lock:
            return len(self._open)

    def log_line(self, message: str) -> None:
        """One line on stderr for a fault of the server's own (never a traceback per request)."""
        print(f"reward server '{self.reward.name}': {message}", file=sys.stderr, flush=True)

    def linger_on_close(self, sock: socket.socket) -> None:
        with self._lock:
            self._lingering.add(sock)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own if a slot is free; else answer 503 from here."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._lock:
            self._open.add(request)
        try:
            threading.Thread(target=self._serve, args=(request, client_address), daemon=True).start()
        except RuntimeError:  # cannot start a thread: same answer as when all slots are taken
            with self._lock:
                self._open.discard(request)
            self._slots.release()
            self._refuse(request)

    def _refuse(self, request: socket.socket) -> None:
        self.refused += 1
        body = json.dumps({"error": f"reward server for '{self.reward.name}' is serving its limit of "
                                    f"{self.max_connections} connections; retry later"}).encode()  # fmt: skip
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")  # fmt: skip
        try:
            request.setblocking(False)  # the accept loop never waits on a client: a fresh socket takes this at once
            request.send(head.encode() + body)
        except OSError:
            pass
        self._lingerer.close(request)

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - handle_error decides what (little) to log
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                self._open.discard(request)
                linger = request in self._lingering
                self._lingering.discard(request)
            self._slots.release()
            if linger and not self.closing:
                self._lingerer.close(request)
            else:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):  # the client went away or timed out: routine, not worth a line
            return
        self.log_line(f"error on a connection from {client_address[0]}: {type(err).__name__}: {err}")

    def start(self) -> RewardHTTPServer:
        """Serve on a background thread (tests, benchmarks, in-process use)."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Close the listening socket and every open connection, finish the queued work, stop the workers."""
        self.closing = True
        self.server_close()
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:  # wakes their threads (a read returns end of input) instead of waiting
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.scorer.close()
        self._lingerer.stop()

    def stop(self) -> None:
        """Stop accepting requests (after ``start``), then ``close``."""
        self.closing = True
        if self._thread is not None:  # shutdown() waits for serve_forever, which only runs after start()
            self.shutdown()
        self.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
