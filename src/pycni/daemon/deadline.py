"""Time limits of one request, and whether its client is still there.

A runtime gives a CNI plugin a limited time; when it is over the plugin is killed, or (through the
daemon) the client answers code 11 and the runtime cleans up with DEL. Work the daemon does after
that is work nobody knows about: a veth, a lease and a pod interface for a sandbox the runtime thinks
has no network. So:

  * reading: a request must arrive whole within READ_TIMEOUT of the connection being accepted - a
    deadline for the whole request, not a timeout per recv(), so one byte every few seconds does not
    keep a connection (and a thread) forever;
  * before the verb runs: the client's deadline (CLOCK_MONOTONIC in milliseconds, sent in the request;
    same time namespace as the daemon, peer.py) must not have passed, and the client must not have
    closed its end (killed after sending its request) - otherwise the request is dropped, never run;
  * after an ADD that succeeded: the client acknowledges the answer (one byte, ACK); without the
    acknowledgement within ACK_TIMEOUT the client has given up or died, and the daemon undoes the ADD
    with a DEL of the same attachment (server.py).
"""

from __future__ import annotations

import select
import socket
import time

from .wire import ACK, recv_exact

READ_TIMEOUT = 10.0  # seconds for a whole request to arrive once the connection is accepted
ACK_TIMEOUT = 10.0  # seconds for a client to acknowledge the answer to its ADD


def now_ms() -> int:
    """CLOCK_MONOTONIC in milliseconds: the clock of the request's "deadline" (time.monotonic() on Linux)."""
    return int(time.monotonic() * 1000)


class Expired(Exception):
    """The time for this step is over."""


class Deadline:
    def __init__(self, at: float) -> None:
        self.at = at  # time.monotonic() seconds

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_ms(cls, ms: int) -> Deadline:
        return cls(ms / 1000)

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0

    def recv_exact(self, conn: socket.socket, n: int) -> bytes:
        """n bytes, all of them before the deadline (Expired otherwise; EOFError if the peer closes)."""

        class _Bounded:
            def recv(_self, size: int) -> bytes:
                left = self.left()
                if left <= 0:
                    raise Expired("the request did not arrive in time")
                conn.settimeout(left)
                try:
                    return conn.recv(size)
                except TimeoutError:
                    raise Expired("the request did not arrive in time") from None

        return recv_exact(_Bounded(), n)


def client_gone(conn: socket.socket) -> bool:
    """Whether the client closed its end (exited, was killed, gave up): nothing can reach it any more.

    POLLHUP on a unix stream socket means the peer is closed in both directions; a client that only
    shut down its sending side (shutdown(SHUT_WR)) still waits for the answer and is not gone."""
    poller = select.poll()
    poller.register(conn, 0)  # POLLHUP and POLLERR are always reported
    return bool(poller.poll(0))


def acknowledged(conn: socket.socket, timeout: float = ACK_TIMEOUT) -> bool:
    """Whether the client acknowledges the answer it was sent (ACK) within `timeout` seconds."""
    try:
        conn.settimeout(timeout)
        return conn.recv(1) == ACK
    except OSError:
        return False
