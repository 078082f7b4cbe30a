"""The shim: hand one CNI request to the pycni daemon, or report that it must run here.

Runs in every exec'd plugin before anything else, so it imports only C modules that cost next to
nothing (`_socket`, `_json`, `binascii`) - not `socket` (its enums cost ~7 ms), `json` (`re`, ~3 ms),
pydantic or pyroute2. `call()` returns None when the daemon is not there, refuses the request, or
speaks another version: nothing was done and the caller runs the verb standalone, with the same
result. Once the request is sent, the daemon may have acted, so a daemon that dies or stalls
mid-request is not retried here: the answer is CNI error 11 ("try again later"), and the runtime's
retry (which DELs first) cleans up.
"""

from __future__ import annotations

import _json
import _socket
import binascii
import os

from .. import __version__
from . import DEFAULT_SOCKET, MAX_FRAME, PROTOCOL, SOCKET_ENV, namespaces, recv_exact

CONNECT_TIMEOUT = 0.5  # seconds: a unix socket connects at once or not at all
REPLY_TIMEOUT_ENV = "PYCNI_DAEMON_TIMEOUT"
DEFAULT_REPLY_TIMEOUT = 120.0  # a verb that takes longer than this is stuck (runtimes give up sooner)
TRY_AGAIN_LATER = 11  # spec.errors.TRY_AGAIN_LATER (not imported: spec.errors is cheap, but not free)
# Why the last call() returned None ("absent" or "refused"): the standalone spool (daemon/spool.py) records it.
last_fallback = ""


class _Ctx:
    """What _json.make_scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None

    def __init__(self) -> None:
        self.memo: dict = {}


def _decode(text: str):
    value, end = _json.make_scanner(_Ctx())(text, 0)
    if text[end:].strip():
        raise ValueError("trailing data")
    return value


def _encode(request: dict) -> bytes:
    """Encode the request (strings, an int, a dict of strings) without the json package."""
    enc = _json.encode_basestring_ascii
    parts = []
    for key, value in request.items():
        if isinstance(value, dict):
            body = ",".join(f"{enc(k)}:{enc(v)}" for k, v in value.items())
            parts.append(f"{enc(key)}:{{{body}}}")
        elif isinstance(value, int):
            parts.append(f"{enc(key)}:{value}")
        else:
            parts.append(f"{enc(key)}:{enc(value)}")
    return ("{" + ",".join(parts) + "}").encode("ascii")


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
    enc = _json.encode_basestring_ascii
    doc = f'{{"cniVersion": "1.1.0", "code": {TRY_AGAIN_LATER}, "msg": {enc(msg)}, "details": {enc(details[:300])}}}'
    return 1, doc, f"pycni: {msg}: {details}\n"


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
        request = _encode({"proto": PROTOCOL, "version": __version__, "plugin": plugin, "ns": namespaces(), "env": environ,
                           "stdin": binascii.b2a_base64(stdin, newline=False).decode("ascii")})
        try:
            timeout = float(environ.get(REPLY_TIMEOUT_ENV) or DEFAULT_REPLY_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_REPLY_TIMEOUT
        sock.settimeout(timeout)
        try:
            sock.sendall(len(request).to_bytes(4, "big") + request)
        except OSError:
            last_fallback = "refused"
            return None  # the daemon closed before reading: it did nothing (e.g. it is stopping)
        try:
            size = int.from_bytes(recv_exact(sock, 4), "big")
            if size > MAX_FRAME:
                raise ValueError(f"answer of {size} bytes")
            answer = _decode(recv_exact(sock, size).decode("utf-8"))
        except TimeoutError:
            return _try_again("the pycni daemon did not answer in time", f"{timeout:g} s on {path}")
        except (OSError, EOFError, ValueError) as exc:
            return _try_again("the pycni daemon failed during the request", f"{type(exc).__name__}: {exc}")
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
