"""VLM judges against a fake OpenAI-compatible server on 127.0.0.1 (hand-computed P(yes) and win rates)."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.rewards import RewardError, build_reward
from visalign.rewards.vlm_judge import win_rates


def _brightness(url: str) -> int:
    data = base64.b64decode(url.split(",", 1)[1])
    return int(np.asarray(Image.open(io.BytesIO(data)))[0, 0, 0])


class FakeJudge(BaseHTTPRequestHandler):
    """Pointwise: P(yes) = brightness/255 split over "Yes"/" yes". Pairwise: the brighter image wins, equal = tie."""

    requests: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append(body)
        urls = [c["image_url"]["url"] for c in body["messages"][0]["content"] if c["type"] == "image_url"]
        values = [_brightness(u) for u in urls]
        if "nonsense" in body["messages"][0]["content"][-1]["text"]:
            top = [{"token": "Maybe", "logprob": -0.1}]
        elif len(values) == 1:
            p = values[0] / 255
            top = [{"token": "Yes", "logprob": math.log(p * 0.75)}, {"token": " yes", "logprob": math.log(p * 0.25)},
                   {"token": "No", "logprob": math.log(1 - p)}, {"token": "The", "logprob": -9.0}]  # fmt: skip
        else:
            a, b = values
            p1 = 0.5 if a == b else (0.9 if a > b else 0.2)
            top = [{"token": "1", "logprob": math.log(p1)}, {"token": "2", "logprob": math.log(1 - p1)}]
        reply = {"choices": [{"message": {"content": top[0]["token"]},
                              "logprobs": {"content": [{"token": top[0]["token"], "top_logprobs": top}]}}]}  # fmt: skip
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def judge_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _flat(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 8, 8) / 255


def test_pointwise_probability_of_yes(judge_url: str) -> None:
    reward = build_reward("vlm_yes", base_url=judge_url, model="judge")
    out = reward(_flat([51, 204, 255 // 2]), ["a cat", "a dog", "a cow"])
    # p = v/255: "Yes" and " yes" are summed (0.75p + 0.25p), "No" has 1 - p -> P(yes) = p
    torch.testing.assert_close(out["vlm_yes"], torch.tensor([0.2, 0.8, 127 / 255]), rtol=0, atol=1e-6)
    request = FakeJudge.requests[-1]
    assert request["model"] == "judge" and request["logprobs"] is True and request["max_tokens"] == 1
    assert "Caption: a " in request["messages"][0]["content"][-1]["text"]


def test_pairwise_win_rates(judge_url: str) -> None:
    reward = build_reward("vlm_pairwise", base_url=judge_url, model="judge")
    assert reward.groupwise
    out = reward(_flat([10, 200, 90, 200]), ["p"] * 4)
    # brightness order: 1 = 3 > 2 > 0. Wins (+1/2 per tie) over the 3 others:
    # 0: 0 -> 0;  1: beats 0, 2, ties 3 -> 2.5/3;  2: beats 0 -> 1/3;  3: beats 0, 2, ties 1 -> 2.5/3
    torch.testing.assert_close(out["vlm_pairwise"], torch.tensor([0.0, 2.5 / 3, 1 / 3, 2.5 / 3]))
    assert out["vlm_pairwise"].mean().item() == pytest.approx(0.5)
    # the judge is position-biased (0.9 vs 0.2 -> averaged with the swapped order): still the same verdicts
    one_order = build_reward("vlm_pairwise", base_url=judge_url, model="judge", both_orders=False)
    torch.testing.assert_close(one_order(_flat([10, 200, 90, 200]), ["p"] * 4)["vlm_pairwise"], out["vlm_pairwise"])


def test_win_rates_matrix() -> None:
    outcome = torch.tensor([[0, 1, 1], [0, 0, 0.5], [0, 0.5, 0]])
    torch.testing.assert_close(win_rates(outcome), torch.tensor([1.0, 0.25, 0.25]))
    with pytest.raises(RewardError, match="at least 2"):
        win_rates(torch.zeros(1, 1))


def test_judge_errors_are_never_scores(judge_url: str) -> None:
    reward = build_reward("vlm_yes", base_url=judge_url, model="judge", template="nonsense {prompt}")
    with pytest.raises(RewardError, match="answered neither 'yes' nor 'no'"):
        reward(_flat([100]), ["x"])
    pairwise = build_reward("vlm_pairwise", base_url=judge_url, model="judge")
    with pytest.raises(RewardError, match="one prompt at a time"):
        pairwise(_flat([1, 2]), ["a", "b"])
    dead = build_reward("vlm_yes", base_url="http://127.0.0.1:9/v1", model="judge", retries=1, backoff_s=0.01)
    with pytest.raises(RewardError, match="failed after 2 attempts"):
        dead(_flat([100]), ["x"])
