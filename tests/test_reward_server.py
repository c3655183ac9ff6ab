"""The reward server and the ``remote`` client over loopback: batching, auth, limits, failures, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from visalign.rewards import Reward, RewardError, build_reward
from visalign.rewards.server import RewardHTTPServer
from visalign.rewards.wire import encode_request

ROOT = Path(__file__).resolve().parents[1]


class Brightness(Reward):
    """Mean pixel value; sleeps per call so that concurrent requests pile up and get coalesced."""

    name = "brightness"

    def __init__(self, delay: float = 0.05, groupwise: bool = False) -> None:
        self.delay, self.batch_sizes = delay, []
        self.groupwise = groupwise  # type: ignore[misc]

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(images.shape[0])
        time.sleep(self.delay)
        value = images.mean(dim=(1, 2, 3))
        if self.groupwise:  # depends on the whole request: coalescing would be wrong
            return {"brightness": value - value.mean()}
        return {"brightness": value, "brightness/x2": 2 * value}


def _flat(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 8, 8) / 255


@pytest.fixture()
def server() -> Iterator[RewardHTTPServer]:
    srv = RewardHTTPServer(Brightness(), "127.0.0.1", 0, token="s3cret", max_batch=16, max_wait_s=0.02,
                           max_body_bytes=200_000, max_request_images=8).start()  # fmt: skip
    yield srv
    srv.stop()


def _post(url: str, body: bytes, token: str | None = "s3cret") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_concurrent_clients_get_their_own_scores_and_are_batched(server: RewardHTTPServer) -> None:
    client = build_reward("remote", url=server.url, token="s3cret", timeout=10, retries=0)
    jobs = [[(7 * i + k) % 256 for k in range(1 + i % 3)] for i in range(12)]  # 12 clients, 1-3 images each

    def call(values: list[int]) -> dict[str, torch.Tensor]:
        return client(_flat(values), [f"p{v}" for v in values])

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(call, jobs))
    for values, out in zip(jobs, results, strict=True):
        assert list(out) == ["brightness", "brightness/x2"]
        torch.testing.assert_close(out["brightness"], torch.tensor(values, dtype=torch.float32) / 255)
        torch.testing.assert_close(out["brightness/x2"], 2 * out["brightness"])
    sizes = server.reward.batch_sizes
    assert sum(sizes) == sum(len(j) for j in jobs) and max(sizes) <= 16
    assert len(sizes) < len(jobs), sizes  # requests were coalesced
    with urllib.request.urlopen(f"{server.url}/health", timeout=5) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["reward"] == "brightness" and health["requests"] == 12


def test_groupwise_rewards_are_not_coalesced() -> None:
    srv = RewardHTTPServer(Brightness(groupwise=True), max_batch=16, max_wait_s=0.05).start()
    try:
        client = build_reward("remote", url=srv.url, retries=0)
        groups = [[10, 20], [100, 140, 180], [0, 255]]
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda g: client(_flat(g), ["p"] * len(g)), groups))
        for g, out in zip(groups, results, strict=True):
            v = torch.tensor(g, dtype=torch.float32) / 255
            torch.testing.assert_close(out["brightness"], v - v.mean())
        assert sorted(srv.reward.batch_sizes) == [2, 2, 3]
    finally:
        srv.stop()


def test_one_bad_request_does_not_fail_the_batch_it_joined() -> None:
    class Picky(Reward):
        name = "picky"

        def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
            time.sleep(0.02)
            if any(p == "bad" for p in prompts):
                raise ValueError("cannot score 'bad'")
            return {"picky": images.mean(dim=(1, 2, 3))}

    srv = RewardHTTPServer(Picky(), max_batch=16, max_wait_s=0.05).start()
    try:
        client = build_reward("remote", url=srv.url, retries=0)

        def call(i: int) -> object:
            try:
                return client(_flat([i]), ["bad" if i == 3 else "ok"])["picky"]
            except RewardError as err:
                return err

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(call, range(8)))
        assert isinstance(results[3], RewardError) and "cannot score 'bad'" in str(results[3])
        for i, r in enumerate(results):
            if i != 3:
                torch.testing.assert_close(r, torch.tensor([i / 255]))
    finally:
        srv.stop()


def test_tokens(server: RewardHTTPServer) -> None:
    for token in ("wrong", None):
        client = build_reward("remote", url=server.url, token=token or "", retries=3, backoff_s=1.0)
        start = time.perf_counter()
        with pytest.raises(RewardError, match="HTTP 401: missing or wrong bearer token"):
            client(_flat([1]), ["p"])
        assert time.perf_counter() - start < 1.0  # a 401 is not retried


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server: RewardHTTPServer) -> None:
    url = f"{server.url}/score"
    good = encode_request(_flat([5, 6]), ["a", "b"], None)
    cases = [
        (b"{not json", 400, "Expecting"),
        (json.dumps([1, 2]).encode(), 400, "JSON object"),
        (json.dumps({"images": ["%%%"], "prompts": ["a"]}).encode(), 400, "images[0] is not a base64"),
        (json.dumps({"images": good["images"], "prompts": ["a"]}).encode(), 400, "2 images but 1 prompts"),
        (json.dumps({**good, "metadata": [{}]}).encode(), 400, "one per image"),
        (json.dumps({"images": [], "prompts": []}).encode(), 400, "non-empty"),
        (json.dumps(encode_request(_flat([1] * 9), ["a"] * 9, None)).encode(), 413, "too many images"),
        (b"{" + b" " * 300_000 + b"}", 413, "exceeds"),
    ]
    for body, status, message in cases:
        code, reply = _post(url, body)
        assert code == status and message in reply["error"], (code, reply)
    assert _post(f"{server.url}/nope", json.dumps(good).encode())[0] == 404
    code, reply = _post(url, json.dumps(good).encode())
    assert code == 200 and reply["scores"]["brightness"] == pytest.approx([5 / 255, 6 / 255])


def test_reward_failure_and_timeout_are_retried_then_reported() -> None:
    class Broken(Reward):
        name = "broken"

        def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
            return {"broken": torch.full((images.shape[0],), float("nan"))}

    srv = RewardHTTPServer(Broken()).start()
    slow = RewardHTTPServer(Brightness(delay=0.5)).start()
    try:
        with pytest.raises(RewardError, match=r"failed after 2 attempts; last error: HTTP 500: .*NaN/inf"):
            build_reward("remote", url=srv.url, retries=1, backoff_s=0.01)(_flat([1]), ["p"])
        start = time.perf_counter()
        with pytest.raises(RewardError, match="failed after 2 attempts; last error: .*timed out"):
            build_reward("remote", url=slow.url, timeout=0.1, retries=1, backoff_s=0.05)(_flat([1]), ["p"])
        assert time.perf_counter() - start < 0.45
    finally:
        srv.stop()
        slow.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_server_killed_mid_run_client_retries_then_fails() -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", VISALIGN_REWARD_TOKEN="tok")
    proc = subprocess.Popen(
        [sys.executable, "-m", "visalign.cli", "serve-reward", "jpeg_compressibility", "--port", str(port),
         "--max-batch", "4", "quality=95"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for _ in range(120):  # bounded wait for the server to come up
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert json.loads(r.read())["reward"] == "jpeg_compressibility"
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("server did not start: " + (proc.stdout.read() if proc.poll() is not None else ""))
        client = build_reward("remote", url=f"http://127.0.0.1:{port}", token="tok", timeout=5, retries=3,
                              backoff_s=0.1)  # fmt: skip
        images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        images = (images * 255).round() / 255  # exactly representable in 8 bits: the PNG trip is lossless
        direct = build_reward("jpeg_compressibility")(images, ["a", "b"])["jpeg_compressibility"]
        outcomes: list[object] = []
        stop = threading.Event()

        def loop() -> None:
            for _ in range(200):  # bounded
                try:
                    outcomes.append(client(images, ["a", "b"])["jpeg_compressibility"])
                except RewardError as err:
                    outcomes.append(err)
                    return
                if stop.is_set() and len(outcomes) > 50:
                    return

        thread = threading.Thread(target=loop)
        thread.start()
        for _ in range(100):
            if len(outcomes) >= 3:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
        killed_at = time.perf_counter()
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        scores = [o for o in outcomes if isinstance(o, torch.Tensor)]
        assert len(scores) >= 3 and all(torch.equal(s, direct) for s in scores)
        error = outcomes[-1]
        assert isinstance(error, RewardError), outcomes[-3:]
        assert f"127.0.0.1:{port}" in str(error) and "failed after 4 attempts" in str(error)
        assert time.perf_counter() - killed_at >= 0.1 + 0.2 + 0.4 - 0.05  # the backoff was waited out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_bench_reward_server_runs_a_round_against_a_git_revision() -> None:
    import argparse
    import shutil

    from benchmark_scripts import load_benchmark

    bench = load_benchmark("bench_reward_server")
    args = argparse.Namespace(clients=4, requests=8, call_ms=1.0, max_batch=16, max_wait_ms=5.0)
    images = torch.rand(2, 3, 8, 8)
    variants = [{"_http": bench._http, "wire": bench.wire, "server": bench.server}]
    if shutil.which("git") and (ROOT / ".git").exists():
        variants.append(bench.load_revision("HEAD"))
    for mods in variants:
        rps, ips, calls = bench.one_round(mods, args, images)
        assert rps > 0 and ips == pytest.approx(2 * rps) and 1 <= calls <= 8


def test_remote_splits_a_batch_larger_than_the_server_takes(server: RewardHTTPServer) -> None:
    """A whole rollout in one call (the GenEval recipe sends 1,152 images) goes out in requests the server accepts
    (this server refuses more than 8 images a request); the scores come back in order."""
    images = _flat(list(range(0, 200, 10)))  # 20 images
    remote = build_reward("remote", url=server.url, token="s3cret", max_images=8)
    scores = remote(images, [f"p{i}" for i in range(20)], [{} for _ in range(20)])
    expected = images.mean(dim=(1, 2, 3))
    torch.testing.assert_close(scores["brightness"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scores["brightness/x2"], 2 * expected, rtol=0, atol=1e-6)
    assert server.scorer.requests == 3  # 8 + 8 + 4
    with pytest.raises(RewardError, match="too many images|413"):
        build_reward("remote", url=server.url, token="s3cret", max_images=20, retries=0)(
            images, [f"p{i}" for i in range(20)], [{} for _ in range(20)])
