"""JSON-over-HTTP POST with timeouts and retries, shared by the ``remote`` reward and the VLM judges."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

from visalign.rewards.base import RewardError


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
        message = body.get("error", err.reason) if isinstance(body, dict) else body
        return str(message.get("message", message) if isinstance(message, dict) else message)
    except Exception:  # noqa: BLE001 - the body is only used to explain the failure
        return str(err.reason)


def post_json(
    who: str,
    url: str,
    payload: Any,
    *,
    token: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> Any:
    """POST ``payload`` as JSON and return the decoded JSON reply.

    Connection errors, timeouts, truncated replies, non-JSON replies, HTTP 429 and 5xx are retried
    ``retries`` times with backoff ``backoff_s * 2**k``; then a ``RewardError`` names ``who``, the URL and
    the last error. Any other 4xx raises at once (retrying a malformed request cannot help).
    """
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = _error_text(err)
            if err.code != 429 and err.code < 500:
                raise RewardError(f"reward '{who}': {url} refused the request: HTTP {err.code}: {detail}") from err
            last = f"HTTP {err.code}: {detail}"
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timeout, truncated
            last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        except json.JSONDecodeError as err:
            last = f"reply is not JSON: {err}"
    raise RewardError(f"reward '{who}': {url} failed after {retries + 1} attempts; last error: {last}")
