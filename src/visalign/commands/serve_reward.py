"""``visalign serve-reward NAME [key=value ...]``: serve a registered reward over HTTP with request batching.

Wire format and endpoints: ``visalign.rewards.wire`` (``POST /score``, ``GET /health``). Binds to
127.0.0.1 by default; binding another address requires a token (``--token`` or ``$VISALIGN_REWARD_TOKEN``).
Reward keyword arguments are ``key=value`` pairs; values are parsed as JSON when they parse
(``max_batch=4``, ``flag=true``, ``weights={"a":1}``), else kept as strings (``checkpoint=/models/pick``).
The server's limits (body bytes, image and request pixels read from the PNG headers, concurrent connections,
idle and read timeouts) are flags; what each bounds is in ``visalign.rewards.server``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from typing import Any

from visalign.commands._args import nonnegative_float, port
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
    parser.add_argument("--port", type=port, default=8000)
    parser.add_argument("--token", default=None, help="bearer token required on /score (default $VISALIGN_REWARD_TOKEN)")
    parser.add_argument("--max-batch", type=int, default=16, help="coalesce concurrent requests up to this many images")
    parser.add_argument("--max-wait-ms", type=nonnegative_float, default=5.0, help="how long to wait for more requests to batch")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted")
    parser.add_argument("--max-images", type=int, default=256, help="most images in one request")
    # The pixel defaults live in visalign.rewards.wire (None here: importing it would import torch for --help).
    parser.add_argument("--max-image-pixels", type=int, default=None,
                        help="most pixels in one image, read from its PNG header before decoding; 413 beyond "
                             "(default 4096*4096)")
    parser.add_argument("--max-request-pixels", type=int, default=None,
                        help="most pixels in all the images of one request; 413 beyond (default 64*1024*1024)")
    parser.add_argument("--max-connections", type=int, default=64,
                        help="connections served at once, a thread each; further ones get 503 at once")
    parser.add_argument("--idle-timeout-s", type=float, default=10.0,
                        help="close a connection on which no request starts within this time")
    parser.add_argument("--read-timeout-s", type=float, default=60.0,
                        help="headers and body of a request must arrive within this time (408 beyond)")
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


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RewardHTTPServer`` keyword arguments of the parsed options (``UserError`` naming a bad one)."""
    from visalign.rewards.wire import MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS

    image_pixels = MAX_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels
    request_pixels = MAX_REQUEST_PIXELS if args.max_request_pixels is None else args.max_request_pixels
    positive = {"--max-batch": args.max_batch, "--max-images": args.max_images, "--max-body-mb": args.max_body_mb,
                "--max-image-pixels": image_pixels, "--max-request-pixels": request_pixels,
                "--max-connections": args.max_connections, "--idle-timeout-s": args.idle_timeout_s,
                "--read-timeout-s": args.read_timeout_s}  # fmt: skip
    for flag, value in positive.items():
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    return {
        "max_batch": args.max_batch, "max_wait_s": args.max_wait_ms / 1000,
        "max_body_bytes": int(args.max_body_mb * 2**20), "max_request_images": args.max_images,
        "max_image_pixels": image_pixels, "max_request_pixels": request_pixels,
        "max_connections": args.max_connections, "idle_timeout_s": args.idle_timeout_s,
        "read_timeout_s": args.read_timeout_s, "verbose": args.verbose,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from visalign.rewards import build_reward
    from visalign.rewards.remote import TOKEN_ENV
    from visalign.rewards.server import RewardHTTPServer

    args = _reparse(args)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise UserError(f"--host {args.host} is not a loopback address: set --token (or ${TOKEN_ENV}) to expose it")
    options = server_options(args)
    reward = build_reward(args.name, **parse_kwargs(args.kwargs))
    try:
        server = RewardHTTPServer(reward, args.host, args.port, token=token, **options)
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err}") from err
    print(f"serving reward '{reward.name}' on {server.url} (POST /score, GET /health; max batch {args.max_batch}, "
          f"{args.max_connections} connections)", flush=True)  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
