"""The Python client: hand one CNI request to the pycni daemon, or report that it must run here.

What the exec'd Python launcher runs before anything else (the default installation runs the C shim,
shim.c, which does the same natively); the protocol, its encoding and every constant are wire.py's.
It imports only `_socket` (not `socket`: its enums cost ~7 ms) and the public `json` - not pydantic or
pyroute2. `call()` returns None when the daemon is not there, refuses the request, or speaks another
version: nothing was done and the caller runs the verb standalone, with the same result. Once the request is sent, the daemon may have acted,
so a daemon that dies or stalls mid-request is not retried here: the answer is CNI error 11 ("try
again later", wire.try_again), and the runtime's retry (which DELs first) cleans up.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

from . import wire

# Why the last call() returned None ("absent" or "refused"): the standalone spool (daemon/spool.py) records it.
last_fallback = ""


def config_allows_daemon(stdin: bytes) -> bool:  # kept for callers of the old name
    return wire.handoff_allowed({}, stdin)


def socket_path(environ: dict[str, str]) -> str:
    return wire.socket_path(environ)


class _Until:
    """recv() with one deadline for the whole answer, not a timeout per call."""

    def __init__(self, sock, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def recv(self, size: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        return self.sock.recv(size)


def call(plugin: str, environ: dict[str, str], stdin: bytes) -> tuple[int, str, str] | None:
    """(exit status, stdout text, stderr text) from the daemon, or None: run the verb here."""
    global last_fallback
    last_fallback = "absent"
    path = wire.socket_path(environ)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(wire.CONNECT_TIMEOUT_MS / 1000)
        try:
            sock.connect(path)
        except OSError:
            return None  # no daemon (no socket, a stale socket, not allowed): standalone
        timeout_ms = wire.reply_timeout_ms(environ)
        # The daemon runs nothing once this deadline has passed (same CLOCK_MONOTONIC: it serves only
        # callers in its own time namespace), and undoes an ADD whose answer we do not acknowledge.
        deadline_ms = int(time.monotonic() * 1000) + timeout_ms
        request = wire.encode_request(plugin, environ, stdin, deadline_ms)
        sock.settimeout(timeout_ms / 1000)
        try:
            sock.sendall(request)
        except OSError:
            last_fallback = "refused"
            return None  # the daemon closed before reading: it did nothing (e.g. it is stopping)
        try:
            reader = _Until(sock, deadline_ms / 1000)
            answer = wire.decode_answer(wire.recv_exact(reader, wire.body_size(wire.recv_exact(reader, wire.HEADER_BYTES))))
        except TimeoutError:
            return wire.try_again("timeout", wire.TIMEOUT_DETAILS % (timeout_ms / 1000, path), stdin)
        except EOFError as exc:
            return wire.try_again("failed", str(exc), stdin)
        except OSError as exc:
            return wire.try_again("failed", exc.strerror or type(exc).__name__, stdin)
        except ValueError as exc:  # FrameError, or not an answer
            return wire.try_again("garbage", str(exc), stdin)
        if not isinstance(answer, str):
            try:
                sock.send(wire.ACK)  # we have it and will use it (an unacknowledged ADD is undone)
            except OSError:
                pass  # the daemon is gone: it can no longer undo anything, the answer stands
    finally:
        sock.close()
    if isinstance(answer, str):
        last_fallback = "refused"
        if os.environ.get(wire.DEBUG_ENV):
            os.write(2, f"pycni: daemon refused: {answer}\n".encode())
        return None
    return answer


def try_again_main() -> None:
    """`python -c ... REASON DETAILS` with the request's stdin: the try-again answer, for the C shim
    (wire.EXEC_TRY_AGAIN), printed exactly as this client prints it."""
    reason, details = sys.argv[1], sys.argv[2]
    status, text, logs = wire.try_again(reason, details, sys.stdin.buffer.read(wire.MAX_STDIN + 1))
    sys.stderr.write(logs)
    sys.stdout.write(text + "\n")
    sys.exit(status)
