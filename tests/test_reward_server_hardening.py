"""The reward server and the ``remote`` client against hostile or broken peers, over real sockets on 127.0.0.1.

Proxies and redirects (where the images and the token may go), PNG headers that claim huge images and real
decompression bombs, idle / slow / too many connections, and malformed HTTP: every case must end in an
HTTP reply or a quiet close, within a bounded time, with nothing but one-line notes in the log.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch
from PIL import Image

from visalign.commands import serve_reward
from visalign.errors import UserError
from visalign.rewards import Reward, RewardError, build_reward
from visalign.rewards import server as server_module
from visalign.rewards.server import RewardHTTPServer
from visalign.rewards.wire import MAX_IMAGE_PIXELS, encode_request

pytestmark = pytest.mark.timeout(30)
TOKEN = "s3cret"


class Mean(Reward):
    name = "mean"

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        return {"mean": images.mean(dim=(1, 2, 3))}


def _flat(values: list[int], size: int = 8) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size) / 255


@pytest.fixture()
def make_server() -> Iterator[Any]:
    servers: list[RewardHTTPServer] = []

    def make(**kwargs: Any) -> RewardHTTPServer:
        srv = RewardHTTPServer(kwargs.pop("reward", Mean()), "127.0.0.1", 0, **kwargs).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


# ---------------------------------------------------------------- raw HTTP helpers


def _connect(srv: RewardHTTPServer, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (``socket.timeout`` if it does not within ``timeout``)."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _exchange(srv: RewardHTTPServer, data: bytes, timeout: float = 5.0) -> bytes:
    with _connect(srv) as sock:
        sock.sendall(data)
        return _read_all(sock, timeout)


def _parse(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def _post(body: bytes, length: str | None = None, extra: str = "", token: str = TOKEN) -> bytes:
    length = str(len(body)) if length is None else length
    head = (f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n")  # fmt: skip
    return head.encode("latin-1") + body


# ---------------------------------------------------------------- PNGs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: bool = True) -> bytes:
    """A 1-bit grayscale PNG of zeros: valid (``rows``) or only its header and a stub of data.

    Zeros compress about 1000:1, so a valid 15000x15000 one is 27 kB and decodes to 675 MB of RGB.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if rows:
        row = b"\x00" * (1 + (width + 7) // 8)
        packer = zlib.compressobj(9)
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        data = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _score_body(pngs: list[bytes]) -> bytes:
    return json.dumps({"images": [base64.b64encode(p).decode() for p in pngs], "prompts": ["p"] * len(pngs)}).encode()


# ---------------------------------------------------------------- a recording HTTP peer (proxy, redirect target)


class _Recorder(ThreadingHTTPServer):
    """Records every request (method, target, headers) and answers each with ``reply``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, reply: tuple[int, dict[str, str], bytes]) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.reply = reply
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                recorder.seen.append((self.command, self.path, dict(self.headers)))
                status, headers, body = recorder.reply
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body)), "Connection": "close"}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_CONNECT = _any  # noqa: N815

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture()
def recorder() -> Iterator[Any]:
    made: list[_Recorder] = []

    def make(status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"{}") -> _Recorder:
        made.append(_Recorder((status, headers or {"Content-Type": "application/json"}, body)))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _set_env_proxy(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, url)
    for name in ("no_proxy", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- 2. proxies and redirects


def test_loopback_urls_never_go_through_a_proxy(monkeypatch: pytest.MonkeyPatch, make_server: Any,
                                                recorder: Any) -> None:  # fmt: skip
    proxy = recorder(502, body=b'{"error": "proxy"}')
    _set_env_proxy(monkeypatch, proxy.url)
    srv = make_server(token=TOKEN)
    for url in (srv.url, f"http://localhost:{srv.port}"):
        for option in ({}, {"proxy": "env"}, {"proxy": proxy.url}):
            client = build_reward("remote", url=url, token=TOKEN, timeout=5, retries=0, **option)
            out = client(_flat([10, 20]), ["a", "b"])
            torch.testing.assert_close(out["mean"], torch.tensor([10 / 255, 20 / 255]))
    assert proxy.seen == []  # neither the images nor the token went to the proxy


def test_other_hosts_use_a_proxy_only_when_asked(monkeypatch: pytest.MonkeyPatch, recorder: Any) -> None:
    scores = json.dumps({"reward": "mean", "scores": {"mean": [0.5]}}).encode()
    proxy = recorder(200, body=scores)  # plays the proxy and, behind it, the reward server
    _set_env_proxy(monkeypatch, proxy.url)
    unreachable = "http://192.0.2.1:9"  # TEST-NET-1: never a real host

    # default: the environment's proxies are ignored, the connection is direct (and fails here)
    with pytest.raises(RewardError, match=r"reward 'remote': http://192\.0\.2\.1:9/score failed after 1 attempts"):
        build_reward("remote", url=unreachable, token=TOKEN, timeout=0.5, retries=0)(_flat([1]), ["p"])
    assert proxy.seen == []

    # proxy="env": through the environment's proxy, token included (the user asked for it)
    out = build_reward("remote", url="http://reward.test:8000", token=TOKEN, retries=0, proxy="env")(_flat([1]), ["p"])
    assert out["mean"].tolist() == [0.5]
    assert [(m, p) for m, p, _ in proxy.seen] == [("POST", "http://reward.test:8000/score")]
    assert proxy.seen[0][2]["Authorization"] == f"Bearer {TOKEN}"

    # proxy="env" honours no_proxy
    monkeypatch.setenv("no_proxy", "192.0.2.1")
    with pytest.raises(RewardError) as info:
        build_reward("remote", url=unreachable, timeout=0.5, retries=0, proxy="env")(_flat([1]), ["p"])
    assert "via proxy" not in str(info.value) and len(proxy.seen) == 1

    # an explicit proxy URL, with no environment at all; its failures name it
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name)
    out = build_reward("remote", url="http://reward.test:8000", retries=0, proxy=proxy.url)(_flat([1]), ["p"])
    assert out["mean"].tolist() == [0.5] and len(proxy.seen) == 2
    proxy.reply = (502, {}, b'{"error": "upstream down"}')
    with pytest.raises(RewardError, match=rf"http://reward\.test:8000/score \(via proxy {proxy.url}\) failed after "
                                          r"2 attempts; last error: HTTP 502: upstream down"):  # fmt: skip
        build_reward("remote", url="http://reward.test:8000", retries=1, backoff_s=0.01,
                     proxy=proxy.url)(_flat([1]), ["p"])  # fmt: skip
    # (build_reward may turn the constructor's RewardError into a UserError naming the reward)
    with pytest.raises((RewardError, UserError),
                       match="reward 'remote': proxy must be None, 'env' or an http:// or https:// URL, got 'socks5://x'"):
        build_reward("remote", url="http://reward.test:8000", proxy="socks5://x")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_refused_and_the_token_stays_home(code: int, recorder: Any) -> None:
    elsewhere = recorder(200, body=b'{"reward": "x", "scores": {"x": [1.0]}}')
    redirector = recorder(code, headers={"Location": f"{elsewhere.url}/score"})
    client = build_reward("remote", url=redirector.url, token=TOKEN, timeout=5, retries=3, backoff_s=1.0)
    start = time.perf_counter()
    with pytest.raises(RewardError, match=rf"redirected to {elsewhere.url}/score \(HTTP {code}\); redirects are not "
                                          "followed"):  # fmt: skip
        client(_flat([1]), ["p"])
    assert time.perf_counter() - start < 1.0  # not retried
    assert elsewhere.seen == [] and len(redirector.seen) == 1


# ---------------------------------------------------------------- 3. pixels, not bytes


@pytest.fixture()
def swap_png(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the ``remote`` client send the given PNG bytes instead of encoding its images."""

    def swap(png: bytes) -> None:
        monkeypatch.setattr("visalign.rewards.wire.png_bytes", lambda array: png)

    return swap


def test_png_headers_over_the_pixel_limits_get_413_before_decoding(make_server: Any, swap_png: Any) -> None:
    srv = make_server(token=TOKEN)  # default limits
    claim = _png(9000, 9000, rows=False)  # 68 bytes that claim 81 Mpixels (243 MB as RGB, 972 MB as float)
    status, reply = _parse(_exchange(srv, _post(_score_body([claim]))))
    assert status == 413, reply
    assert reply["error"] == (f"images[0] is 9000x9000 = 81,000,000 pixels, over the server's limit of "
                              f"{MAX_IMAGE_PIXELS:,} pixels per image")  # fmt: skip
    swap_png(claim)  # the real client, its PNG swapped for the claim: refused at once, not retried
    client = build_reward("remote", url=srv.url, token=TOKEN, retries=3, backoff_s=1.0)
    start = time.perf_counter()
    with pytest.raises(RewardError, match=rf"{srv.url}/score refused the request: HTTP 413: images\[0\] is 9000x9000"):
        client(torch.zeros(1, 3, 8, 8), ["p"])
    assert time.perf_counter() - start < 1.0

    # per request: each image is within the per-image limit, together they are not
    small = make_server(token=TOKEN, max_request_pixels=1000)
    pngs = [_png(20, 20)] * 3
    status, reply = _parse(_exchange(small, _post(_score_body(pngs))))
    assert status == 413 and reply["error"] == ("3 images of 1,200 pixels in all, over the server's limit of 1,000 "
                                                "pixels per request"), reply  # fmt: skip
    status, reply = _parse(_exchange(small, _post(_score_body(pngs[:2]), extra="Connection: close\r\n")))
    assert status == 200 and reply["scores"]["mean"] == [0.0, 0.0]
    # only PNG: the limits rest on reading its header
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    status, reply = _parse(_exchange(small, _post(_score_body([buffer.getvalue()]))))
    assert status == 400 and reply["error"] == ("images[0] is not a base64-encoded PNG: not a PNG (the wire format "
                                                "carries PNG images)")  # fmt: skip


def test_a_decompression_bomb_gets_a_413_reply_and_is_not_retried(make_server: Any, swap_png: Any) -> None:
    bomb = _png(15000, 15000)  # valid, 27 kB; 225 Mpixels: PIL itself calls it a bomb
    srv = make_server(token=TOKEN)
    generous = make_server(token=TOKEN, max_image_pixels=10**9, max_request_pixels=10**9)  # PIL's limit answers
    swap_png(bomb)
    for target, pattern in ((srv, r"is 15000x15000 = 225,000,000 pixels, over the server's limit"),
                            (generous, r"is 15000x15000: Image size \(225000000 pixels\) exceeds limit")):  # fmt: skip
        client = build_reward("remote", url=target.url, token=TOKEN, retries=3, backoff_s=1.0)
        start = time.perf_counter()
        with pytest.raises(RewardError, match=rf"{target.url}/score refused the request: HTTP 413: images\[0\] "
                                              + pattern):  # fmt: skip
            client(torch.zeros(1, 3, 8, 8), ["p"])
        assert time.perf_counter() - start < 1.0  # answered, not dropped and retried
    assert srv.scorer.requests == 0 and generous.scorer.requests == 0


def test_the_real_9000_square_png_is_refused_without_decoding(make_server: Any, swap_png: Any) -> None:
    srv = make_server()
    swap_png(_png(9000, 9000))  # valid, 10 kB
    with pytest.raises(RewardError, match="HTTP 413: images\\[0\\] is 9000x9000"):
        build_reward("remote", url=srv.url, retries=0)(torch.zeros(1, 3, 8, 8), ["p"])


def test_an_unexpected_error_still_gets_a_reply_and_one_log_line(make_server: Any, monkeypatch: pytest.MonkeyPatch,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(server_module, "decode_request", broken)
    srv = make_server()
    client = build_reward("remote", url=srv.url, retries=2, backoff_s=0.01)
    with pytest.raises(RewardError, match=r"failed after 3 attempts; last error: HTTP 500: reward server for 'mean' "
                                          "failed: RuntimeError: decoder exploded"):  # fmt: skip
        client(_flat([1]), ["p"])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.count("reward server 'mean': error serving POST '/score': RuntimeError: decoder exploded") == 3


# ---------------------------------------------------------------- 4. time and connections


def test_idle_and_slow_clients_are_cut_off(make_server: Any) -> None:
    srv = make_server(token=TOKEN, idle_timeout_s=0.3, read_timeout_s=0.8)
    # a connection that never sends anything
    with _connect(srv) as sock:
        start = time.perf_counter()
        assert _read_all(sock, timeout=3) == b""
        assert 0.25 < time.perf_counter() - start < 2
    # an idle keep-alive connection after a request
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=3)
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["reward"] == "mean"
    assert response.getheader("Connection") is None  # kept alive...
    start = time.perf_counter()
    assert conn.sock is not None and _read_all(conn.sock, timeout=3) == b""  # ...then closed when idle
    assert time.perf_counter() - start < 2
    conn.close()
    # headers trickled a byte at a time, each well within any per-recv timeout
    with _connect(srv) as sock:
        start = time.perf_counter()
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        reply = b""
        for _ in range(50):
            sock.sendall(b"X")
            if select.select([sock], [], [], 0.1)[0]:
                reply = _read_all(sock, timeout=3)
                break
        elapsed = time.perf_counter() - start
    status, body = _parse(reply)
    assert status == 408 and body["error"] == "request not received within 0.8 s (the server's read timeout)"
    assert 0.7 < elapsed < 2
    # a body that stops short of its Content-Length
    with _connect(srv) as sock:
        start = time.perf_counter()
        sock.sendall(_post(b'{"images": ', length="1000"))
        status, body = _parse(_read_all(sock, timeout=3))
        assert status == 408 and 0.7 < time.perf_counter() - start < 2


def _threads_settle(expected_max: int, deadline_s: float = 2.0) -> int:
    end = time.monotonic() + deadline_s
    while threading.active_count() > expected_max and time.monotonic() < end:
        time.sleep(0.02)
    return threading.active_count()


def test_connections_are_bounded_and_the_excess_refused_at_once(make_server: Any) -> None:
    srv = make_server(token=TOKEN, max_connections=4, idle_timeout_s=5.0)
    before = threading.active_count()
    held = [_connect(srv) for _ in range(4)]
    try:
        for _ in range(100):  # wait until the four are being served
            if srv.connections == 4:
                break
            time.sleep(0.01)
        assert srv.connections == 4
        start = time.perf_counter()
        extra = [_connect(srv) for _ in range(40)]
        replies = [_read_all(s, timeout=3) for s in extra]
        assert time.perf_counter() - start < 2
        for sock in extra:
            sock.close()
        for reply in replies:
            status, body = _parse(reply)
            assert status == 503 and b"Retry-After: 1" in reply, reply
            assert body["error"] == "reward server for 'mean' is serving its limit of 4 connections; retry later"
        assert threading.active_count() <= before + 4  # one thread per served connection, none for the rest
        client = build_reward("remote", url=srv.url, token=TOKEN, retries=0)
        with pytest.raises(RewardError, match="HTTP 503: reward server for 'mean' is serving its limit of 4"):
            client(_flat([3]), ["p"])
        assert srv.refused == 41
    finally:
        for sock in held:
            sock.close()
    assert _threads_settle(before) <= before  # the held threads end as soon as their clients leave
    client = build_reward("remote", url=srv.url, token=TOKEN, retries=0)
    assert client(_flat([3]), ["p"])["mean"].tolist() == pytest.approx([3 / 255])


def test_stop_closes_the_connections_it_is_serving() -> None:
    srv = RewardHTTPServer(Mean(), idle_timeout_s=60, read_timeout_s=60).start()
    idle, slow = _connect(srv), _connect(srv)
    slow.sendall(b"POST /score HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.1)  # let both be accepted and waiting in their threads
    stopper = threading.Thread(target=srv.stop)
    start = time.perf_counter()
    stopper.start()
    stopper.join(timeout=5)
    assert not stopper.is_alive() and time.perf_counter() - start < 2
    for sock in (idle, slow):
        with sock:
            assert _read_all(sock, timeout=3) == b""  # closed, not left to the 60 s timeouts


# ---------------------------------------------------------------- 5. malformed HTTP


def test_malformed_http_gets_a_4xx_reply_or_a_quiet_close(make_server: Any,
                                                          capfd: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    srv = make_server(token=TOKEN, max_body_bytes=2_000_000)
    good = json.dumps(encode_request(_flat([5]), ["a"], None)).encode()
    nested = b"[" * 100_000 + b"]" * 100_000
    nested_meta = json.dumps({**json.loads(good), "metadata": [{}]}).encode().replace(b"[{}]", b"[{\"a\": " + nested + b"}]")
    cases: list[tuple[str, bytes, int, str]] = [
        ("negative length", _post(b"{}", length="-1"), 400, "invalid Content-Length '-1'"),
        ("unicode digit length", _post(b"{}", length="\xb2"), 400, "invalid Content-Length '\xb2'"),
        ("float length", _post(b"{}", length="1e3"), 400, "invalid Content-Length '1e3'"),
        ("huge length", _post(b"{}", length="9" * 30), 413, "exceeds the server's limit of 2,000,000 bytes"),
        ("two lengths", _post(b"{}", extra="Content-Length: 3\r\n"), 400, "conflicting Content-Length headers"),
        ("chunked", _post(b"{}", extra="Transfer-Encoding: chunked\r\n"), 411, "Transfer-Encoding is not supported"),
        ("no length", b"POST /score HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n", 411, "Content-Length required"),
        ("nested JSON", _post(nested), 400, "nested too deeply"),
        ("nested metadata", _post(nested_meta), 400, "nested too deeply"),
        ("5000-digit integer", _post(b"{\"images\": " + b"1" * 5000 + b"}"), 400, "body is not valid JSON"),
        ("not UTF-8", _post(b"\xff\xfe\xfa"), 400, "body is not valid JSON"),
        ("wrong token, big body", _post(b" " * 1_500_000, token="nope"), 401, "missing or wrong bearer token"),
        ("TLS hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)) + b"\r\n\r\n", 400, "Bad"),
        ("long header", b"GET /health HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "headers larger than"),
        ("many headers", b"GET /health HTTP/1.1\r\n" + b"X: 1\r\n" * 150 + b"\r\n", 431, "more than 100 headers"),
        ("large headers", b"GET /health HTTP/1.1\r\n" + (b"X: " + b"a" * 4000 + b"\r\n") * 20 + b"\r\n", 431,
         "headers larger than 65,536 bytes (the server's limit)"),
        ("header without colon", b"POST /score HTTP/1.1\r\nno colon here\r\n\r\n", 401, "bearer token"),
        ("unknown method", b"BREW /score HTTP/1.1\r\n\r\n", 405, "unsupported method 'BREW'"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "Invalid HTTP version"),
        ("expect 100, wrong token", _post(b"{}", token="x", extra="Expect: 100-continue\r\n")[:-2], 401, "token"),
    ]
    for name, data, status, message in cases:
        start = time.perf_counter()
        got, body = _parse(_exchange(srv, data))
        assert (got, message in body.get("error", "")) == (status, True), (name, got, body)
        assert time.perf_counter() - start < 2, name
    # the client half-closes mid-body: it may still read, so it gets its answer
    with _connect(srv) as sock:
        sock.sendall(_post(good[:20], length=str(len(good))))
        sock.shutdown(socket.SHUT_WR)
        status, body = _parse(_read_all(sock))
        assert status == 400 and body["error"] == f"body ended after 20 of {len(good)} bytes"
    # the client resets mid-body (and mid-headers): nobody to answer; the server carries on
    for data in (_post(good[:20], length=str(len(good))), b"POST /score HTTP/1.1\r\nContent-Le"):
        sock = _connect(srv)
        sock.sendall(data)
        time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    # a keep-alive connection survives a good request and a 404, and then is closed on the error
    with _connect(srv) as sock:
        sock.sendall(_post(good) + b"GET /nope HTTP/1.1\r\n\r\n")
        replies = _read_all(sock)
        assert replies.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404 " in replies
    status, body = _parse(_exchange(srv, _post(good, extra="Connection: close\r\n")))
    assert status == 200 and body["scores"]["mean"] == pytest.approx([5 / 255])
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


# ---------------------------------------------------------------- the command line


def test_serve_reward_flags_reach_the_server() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    serve_reward.add_arguments(parser)
    args = serve_reward._reparse(parser.parse_args([
        "mean", "--max-image-pixels", "100", "--max-request-pixels", "300", "--max-connections", "3",
        "--idle-timeout-s", "0.5", "--read-timeout-s", "2", "k=1",
    ]))  # fmt: skip
    options = serve_reward.server_options(args)
    assert {k: options[k] for k in ("max_image_pixels", "max_request_pixels", "max_connections", "idle_timeout_s",
                                    "read_timeout_s")} == {"max_image_pixels": 100, "max_request_pixels": 300,
                                                           "max_connections": 3, "idle_timeout_s": 0.5,
                                                           "read_timeout_s": 2.0}  # fmt: skip
    srv = RewardHTTPServer(Mean(), **options).start()
    try:
        status, body = _parse(_exchange(srv, _post(_score_body([_png(11, 10)]))))
        assert status == 413 and "over the server's limit of 100 pixels per image" in body["error"]
    finally:
        srv.stop()
    defaults = serve_reward.server_options(serve_reward._reparse(parser.parse_args(["mean"])))
    assert defaults["max_image_pixels"] == MAX_IMAGE_PIXELS and defaults["max_connections"] == 64
    for flag in ("--max-connections", "--max-image-pixels", "--read-timeout-s"):
        with pytest.raises(UserError, match=f"{flag} must be > 0, got 0"):
            serve_reward.server_options(serve_reward._reparse(parser.parse_args(["mean", flag, "0"])))


@pytest.mark.parametrize("flag, value", [("--port", "70000"), ("--max-wait-ms", "nan")])
def test_serve_reward_refuses_bad_flags_in_one_line(flag, value) -> None:
    run = subprocess.run([sys.executable, "-m", "visalign.cli", "serve-reward", "jpeg", flag, value],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"error: bad arguments for serve-reward: {flag} {value}" in run.stderr
