"""The socket-level guards of the reward server's connections: read deadlines, write timeouts, lingering close
and the header budget.

* ``DeadlineReader``: a connection's input, where the whole read of a request (not each ``recv``) must end by
  a deadline, so a client trickling a byte at a time cannot hold a connection;
* ``TimedWriter``: a connection's output, where each write must complete within a timeout;
* ``Lingerer``: "lingering close" for connections whose input may not have been read (every error reply):
  shut for writing, then the input is drained until the client closes or ``linger_s`` passes, by one thread
  for all such connections. Closing with unread input would make the kernel send a reset, which can destroy
  the reply before the client reads it;
* ``HeaderBudget``: the header lines of a request may hold ``MAX_HEADER_BYTES`` in all.
"""

from __future__ import annotations

import http.client
import io
import math
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any

# all the header lines of one request together (nginx's default allows 32 KiB; Apache's 100 lines of 8 KiB)
MAX_HEADER_BYTES = 64 * 1024


class DeadlineReader(io.RawIOBase):
    """A connection's raw input, where every ``recv`` waits at most until ``deadline`` (``time.monotonic``).

    A plain socket timeout bounds each ``recv``; a client sending a byte just before each timeout would
    hold the connection for ever. Setting the timeout to what is left of one deadline bounds the whole read.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        self._sock.settimeout(None if left == math.inf else left)
        return self._sock.recv_into(buffer)


class TimedWriter(io.BufferedIOBase):
    """A connection's output: each write must complete within ``timeout_s`` (a client that stops reading)."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self._sock, self._timeout_s = sock, timeout_s

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(self._timeout_s)
        self._sock.sendall(data)  # the timeout bounds the whole sendall
        with memoryview(data) as view:
            return view.nbytes


class Lingerer:
    """Lingering close for connections whose input was not read, on one thread (see the module docstring)."""

    def __init__(self, linger_s: float = 2.0, max_sockets: int = 1024) -> None:
        self.linger_s, self.max_sockets = linger_s, max_sockets
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._incoming: deque[socket.socket] = deque()
        self._deadlines: dict[socket.socket, float] = {}  # owned by the loop thread
        self._count = 0  # sockets handed over and not yet closed
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="reward-linger", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket) -> None:
        """Shut ``sock`` for writing (the reply is complete) and close it once the client is done sending."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:  # already reset by the peer: nothing left to protect
            sock.close()
            return
        with self._lock:
            if self._stopped or self._count >= self.max_sockets:  # bounded: beyond it, a plain close
                sock.close()
                return
            self._count += 1
            self._incoming.append(sock)
        self._wake()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake()
        self._thread.join(timeout=5)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # a full wake-up channel already wakes the loop
            pass

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._deadlines[sock]
        sock.close()
        with self._lock:
            self._count -= 1

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(self._deadlines.values()) - now) if self._deadlines else None
            for key, _ in self._selector.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):  # discard what the client still sends
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._drop(sock)  # end of input (or an error): the client has read what it wanted
            with self._lock:
                stopped, incoming = self._stopped, list(self._incoming)
                self._incoming.clear()
            now = time.monotonic()
            for sock in incoming:
                try:
                    self._selector.register(sock, selectors.EVENT_READ)
                except (OSError, ValueError):  # closed meanwhile (a reset): nothing to wait for
                    sock.close()
                    with self._lock:
                        self._count -= 1
                    continue
                self._deadlines[sock] = now + self.linger_s
            for sock in [s for s, d in self._deadlines.items() if d <= now or stopped]:
                self._drop(sock)
            if stopped:
                self._selector.close()
                self._wake_r.close()
                self._wake_w.close()
                return


class HeaderBudget:
    """What ``http.client.parse_headers`` reads the headers through: at most ``budget`` bytes in all.

    It allows 100 lines of 64 KiB each by itself, 6.5 MB per connection before the token is even looked at.
    """

    def __init__(self, rfile: io.BufferedReader, budget: int) -> None:
        self._rfile, self._budget, self._left = rfile, budget, budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line = self._rfile.readline(cap)
        self._left -= len(line)
        if self._left < 0:  # parse_request answers an HTTPException with 431
            raise http.client.HTTPException(f"headers larger than {self._budget:,} bytes (the server's limit)")
        return line
