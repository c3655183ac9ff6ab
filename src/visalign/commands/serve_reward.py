"""``visalign serve-reward NAME [key=value ...]``: serve a registered reward over HTTP with request batching.

Wire format and endpoints: ``visalign.rewards.wire`` (``POST /score``, ``GET /health``). Binds to
127.0.0.1 by default; binding another address requires a token (``--token`` or ``$VISALIGN_REWARD_TOKEN``).
Reward keyword arguments are ``key=value`` pairs; values are parsed as JSON when they parse
(``max_batch=4``, ``flag=true``, ``weights={"a":1}``), else kept as strings (``checkpoint=/models/pick``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from typing import Any

from visalign.errors import UserError

NAME = "serve-reward"
HELP = "serve a registered reward over HTTP"


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (JSON values when they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"reward argument '{item}' must look like key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=None, help="bearer token required on /score (default $VISALIGN_REWARD_TOKEN)")
    parser.add_argument("--max-batch", type=int, default=16, help="coalesce concurrent requests up to this many images")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long to wait for more requests to batch")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted")
    parser.add_argument("--max-images", type=int, default=256, help="most images in one request")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="registered reward name (see `visalign rewards list`)")
    # Everything after NAME (options and key=value pairs, in any order) is re-parsed in `run`, so that
    # `serve-reward NAME --port 9000 checkpoint=/models/pick` works (plain argparse rejects a positional
    # list that follows options).
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="[options] [key=value ...]",
                        help="server options below, and reward constructor arguments as key=value")  # fmt: skip
    _add_options(parser)


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"visalign serve-reward {args.name}")
    _add_options(parser)
    parser.add_argument("kwargs", nargs="*", metavar="key=value")
    defaults = {k: v for k, v in vars(args).items() if k not in ("rest", "kwargs")}
    parser.set_defaults(**defaults)
    try:
        return parser.parse_intermixed_args(list(getattr(args, "rest", None) or []))
    except SystemExit as exc:  # argparse already printed the problem
        raise UserError(f"bad arguments for serve-reward: {' '.join(args.rest)}") from exc


def run(args: argparse.Namespace) -> int:
    from visalign.rewards import build_reward
    from visalign.rewards.remote import TOKEN_ENV
    from visalign.rewards.server import RewardHTTPServer

    args = _reparse(args)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise UserError(f"--host {args.host} is not a loopback address: set --token (or ${TOKEN_ENV}) to expose it")
    if args.max_batch < 1 or args.max_images < 1:
        raise UserError("--max-batch and --max-images must be >= 1")
    reward = build_reward(args.name, **parse_kwargs(args.kwargs))
    try:
        server = RewardHTTPServer(
            reward, args.host, args.port, token=token, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000,
            max_body_bytes=int(args.max_body_mb * 2**20), max_request_images=args.max_images, verbose=args.verbose,
        )  # fmt: skip
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err}") from err
    print(f"serving reward '{reward.name}' on {server.url} (POST /score, GET /health; max batch {args.max_batch})",
          flush=True)  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.closing = True
        server.server_close()
        server.scorer.close()
    return 0
