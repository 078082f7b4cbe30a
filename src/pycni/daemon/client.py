"""The shim: hand one CNI request to the pycni daemon, or report that it must run here.

Runs in every exec'd plugin before anything else, so it imports little: `_socket` (not `socket`,
whose enums cost ~7 ms), `json`, `binascii` - no pydantic, no pyroute2. `call()` returns None when
the daemon is not there, refuses the request, or speaks another version: nothing was done and the caller runs the verb standalone, with the same
result. Once the request is sent, the daemon may have acted, so a daemon that dies or stalls
mid-request is not retried here: the answer is CNI error 11 ("try again later"), and the runtime's
retry (which DELs first) cleans up.
"""

from __future__ import annotations

import _socket
import binascii
import json
import os
import time

from .. import __version__
from . import ACK, DEFAULT_SOCKET, MAX_FRAME, PROTOCOL, SOCKET_ENV, recv_exact

CONNECT_TIMEOUT = 0.5  # seconds: a unix socket connects at once or not at all
REPLY_TIMEOUT_ENV = "PYCNI_DAEMON_TIMEOUT"
DEFAULT_REPLY_TIMEOUT = 120.0  # a verb that takes longer than this is stuck (runtimes give up sooner)
TRY_AGAIN_LATER = 11  # spec.errors.TRY_AGAIN_LATER (not imported: spec.errors is cheap, but not free)
# Why the last call() returned None ("absent" or "refused"): the standalone spool (daemon/spool.py) records it.
last_fallback = ""


def _decode(text: str):
    return json.loads(text)


def _encode(request: dict) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode("ascii")  # ensure_ascii (the default)


def config_allows_daemon(stdin: bytes) -> bool:
    """`"pycniDaemon": false` at the top of the network configuration turns the handoff off."""
    try:
        data = _decode(stdin.decode("utf-8"))
    except Exception:  # noqa: BLE001 - not our problem here: the verb reports the bad configuration either way
        return True
    return not (isinstance(data, dict) and data.get("pycniDaemon") is False)


def socket_path(environ: dict[str, str]) -> str:
    return environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _try_again(msg: str, details: str) -> tuple[int, str, str]:
    doc = json.dumps({"cniVersion": "1.1.0", "code": TRY_AGAIN_LATER, "msg": msg, "details": details[:300]})
    return 1, doc, f"pycni: {msg}: {details}\n"


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
    path = socket_path(environ)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            return None  # no daemon (no socket, a stale socket, not allowed): standalone
        try:
            timeout = float(environ.get(REPLY_TIMEOUT_ENV) or DEFAULT_REPLY_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_REPLY_TIMEOUT
        if not 0 < timeout <= 86400:  # NaN, negative, infinite: the default
            timeout = DEFAULT_REPLY_TIMEOUT
        # The daemon runs nothing once this deadline has passed (same CLOCK_MONOTONIC: it serves only
        # callers in its own time namespace), and undoes an ADD whose answer we do not acknowledge.
        deadline = time.monotonic() + timeout
        request = _encode({"proto": PROTOCOL, "version": __version__, "plugin": plugin,
                           "deadline": int(deadline * 1000), "env": environ,
                           "stdin": binascii.b2a_base64(stdin, newline=False).decode("ascii")})
        sock.settimeout(timeout)
        try:
            sock.sendall(len(request).to_bytes(4, "big") + request)
        except OSError:
            last_fallback = "refused"
            return None  # the daemon closed before reading: it did nothing (e.g. it is stopping)
        try:
            reader = _Until(sock, deadline)
            size = int.from_bytes(recv_exact(reader, 4), "big")
            if size > MAX_FRAME:
                raise ValueError(f"answer of {size} bytes")
            answer = _decode(recv_exact(reader, size).decode("utf-8"))
        except TimeoutError:
            return _try_again("the pycni daemon did not answer in time", f"{timeout:g} s on {path}")
        except (OSError, EOFError, ValueError) as exc:
            return _try_again("the pycni daemon failed during the request", f"{type(exc).__name__}: {exc}")
        if isinstance(answer, dict) and "status" in answer:
            try:
                sock.send(ACK)  # we have it and will use it (an unacknowledged ADD is undone)
            except OSError:
                pass  # the daemon is gone: it can no longer undo anything, the answer stands
    finally:
        sock.close()
    if not isinstance(answer, dict) or "refused" in answer:
        last_fallback = "refused"
        if os.environ.get("PYCNI_DAEMON_DEBUG"):
            os.write(2, f"pycni: daemon refused: {answer}\n".encode())
        return None
    try:
        return int(answer["status"]), str(answer["stdout"]), str(answer.get("stderr") or "")
    except (KeyError, TypeError, ValueError):
        return _try_again("the pycni daemon answered garbage", repr(answer)[:200])
