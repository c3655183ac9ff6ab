"""JSON-over-HTTP POST with timeouts and retries, shared by the ``remote`` reward and the VLM judges.

Proxies: a loopback URL (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``) is always reached directly,
whatever the environment says: a proxy would see the images and the bearer token of a request that never
needed to leave the machine. For other hosts ``proxy`` decides: ``None`` (direct), ``"env"`` (the
``http_proxy`` / ``https_proxy`` / ``no_proxy`` variables, as urllib reads them) or a proxy URL.
Redirects are never followed: urllib would re-send the ``Authorization`` header to wherever the
``Location`` points (and drop the body of a POST anyway).
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from visalign.rewards.base import RewardError

ENV = "env"


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a URL's host name, without brackets) names this machine by definition."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always the loopback interface
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_proxy(who: str, proxy: str | None) -> str | None:
    """Validate a ``proxy`` option: ``None`` / ``""`` (direct), ``"env"``, or an ``http(s)://`` proxy URL."""
    if proxy is None or proxy == "":
        return None
    if proxy == ENV or (isinstance(proxy, str) and proxy.startswith(("http://", "https://"))):
        return proxy
    raise RewardError(f"reward '{who}': proxy must be None, 'env' or an http:// or https:// URL, got {proxy!r}")


def effective_proxy(url: str, proxy: str | None) -> str | None:
    """The proxy a POST to ``url`` goes through under the ``proxy`` option (``None``: a direct connection)."""
    parts = urllib.parse.urlsplit(url)
    if proxy is None or is_loopback_host(parts.hostname):
        return None
    if proxy != ENV:
        return proxy
    found = urllib.request.getproxies().get(parts.scheme)
    if not found or urllib.request.proxy_bypass(parts.netloc):  # honours no_proxy
        return None
    return found


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # urllib then raises HTTPError with the 3xx status


@functools.lru_cache(maxsize=16)
def _opener(via: str | None) -> urllib.request.OpenerDirector:
    # An explicit ProxyHandler replaces urllib's default one, which would read the environment. Cached: building
    # one costs about 0.16 ms, a tenth of a small request (urlopen's own opener is shared in the same way).
    proxies = {"http": via, "https": via} if via else {}
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _NoRedirect())


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
    proxy: str | None = ENV,
) -> Any:
    """POST ``payload`` as JSON and return the decoded JSON reply.

    Connection errors, timeouts, truncated replies, non-JSON replies, HTTP 429 and 5xx are retried
    ``retries`` times with backoff ``backoff_s * 2**k``; then a ``RewardError`` names ``who``, the URL (and
    the proxy, if one was used) and the last error. Any other 4xx, and any redirect, raises at once
    (retrying cannot help). ``proxy``: see the module docstring; loopback URLs never use one.
    """
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    via = effective_proxy(url, check_proxy(who, proxy))
    where = f"{url} (via proxy {via})" if via else url
    opener = _opener(via)
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = _error_text(err)
            if 300 <= err.code < 400:
                target = err.headers.get("Location", "?") if err.headers else "?"
                raise RewardError(f"reward '{who}': {where} redirected to {target} (HTTP {err.code}); redirects are "
                                  "not followed, since the request and its token would go with them") from err
            if err.code != 429 and err.code < 500:
                raise RewardError(f"reward '{who}': {where} refused the request: HTTP {err.code}: {detail}") from err
            last = f"HTTP {err.code}: {detail}"
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timeout, truncated
            last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        except json.JSONDecodeError as err:
            last = f"reply is not JSON: {err}"
    raise RewardError(f"reward '{who}': {where} failed after {retries + 1} attempts; last error: {last}")
