"""The pycni daemon's wire protocol: its one definition.

The Python client (client.py), the server (server.py) and the C shim (shim.c) all speak it from here:
the Python sides import this module, and the shim includes the header that `python -m pycni.daemon.wire
--c-header` writes when it is built (integration/shim/build.sh), so no constant is copied by hand.
Golden request and answer bytes of every kind of exchange are in tests/wire/; tests/test_wire.py runs
them against all three.

One request per connection, over a root-only unix socket (DEFAULT_SOCKET, or $PYCNI_SOCKET). Each
direction is one frame: a 4-byte big-endian length (1 .. MAX_FRAME), then that many bytes of JSON.

  request  {"proto":2,"version":"<pycni version>","plugin":"pycni"|"pycni-host-local",
            "deadline":<CLOCK_MONOTONIC milliseconds when the client gives up>,
            "env":{the caller's whole environment},"stdin":"<base64 of stdin>"}
  answer   {"status":<exit status 0..255>,"stdout":"<the one document, or empty>","stderr":"<logs>"}
      or   {"refused":"<why>"}  - nothing was done: the client runs the verb itself.
  then     the client sends ACK (one byte) once it has an answer with a status and will use it; an ADD
           whose answer is not acknowledged is undone by the daemon (deadline.py).

Encoding, byte for byte the same from Python and from C: the keys in the order above, no whitespace,
ASCII only - `"` and `\\` escaped, \\b \\f \\n \\r \\t as such, other control characters, DEL and every
non-ASCII character as \\uXXXX (lowercase hex; UTF-16 surrogate pairs beyond the BMP): what
json.dumps(value, separators=(",", ":")) writes. Environment bytes that are not UTF-8 travel as
Python's os.environ holds them (surrogateescape: one \\udcXX per byte), so the daemon gets them back
exactly.

Whenever the daemon cannot be used (no socket, a refusal, the handoff turned off: handoff_allowed) the
exec'd plugin runs the verb itself. Once a request has been sent the daemon may have acted, so a daemon
that fails mid-request is never retried: the plugin answers CNI error 11 "try again later" (SPEC.md
"Error"; the runtime's retry DELs first), and try_again() is the one place that answer is written -
the C shim execs the installation's interpreter to print it (EXEC_TRY_AGAIN).

This module is imported by every exec'd plugin before anything else: it imports nothing at load time
(the public `json` package only when a request is encoded or an answer decoded - the Python launcher's
path, NATIVE_SHIM=0; the default native shim does all of it in C).
"""

from __future__ import annotations

import sys

PROTOCOL = 2
DEFAULT_SOCKET = "/run/pycni/pycni.sock"
SOCKET_ENV = "PYCNI_SOCKET"  # overrides DEFAULT_SOCKET (tests, benchmarks, unusual layouts)
HEADER_BYTES = 4  # the big-endian length in front of every frame
MAX_STDIN = 1 << 20  # = spec.env.MAX_CONFIG_BYTES (tests/test_wire.py): a plugin reads at most this + 1 byte
MAX_FRAME = 4 << 20  # a request carries at most MAX_STDIN of stdin (base64) plus the environment
ACK = b"\x06"  # the client's acknowledgement of an answer
PLUGINS = ("pycni", "pycni-host-local")  # the executables; = runner.PLUGINS (tests/test_wire.py)
REQUEST_KEYS = ("proto", "version", "plugin", "deadline", "env", "stdin")  # in this order
ANSWER_KEYS = ("status", "stdout", "stderr")  # in this order
REFUSED_KEY = "refused"

# The client's side of the timing (the daemon's: deadline.py).
CONNECT_TIMEOUT_MS = 500  # a unix socket connects at once or not at all
REPLY_TIMEOUT_ENV = "PYCNI_DAEMON_TIMEOUT"  # seconds, decimal digits with an optional fraction
DEFAULT_REPLY_TIMEOUT_MS = 120_000  # a verb that takes longer than this is stuck (runtimes give up sooner)
MAX_REPLY_TIMEOUT_MS = 86_400_000

# The handoff is off with $PYCNI_NO_DAEMON in NO_DAEMON_VALUES (any case), with $PYCNI_FAULT set (crash
# injection must kill the plugin, not the daemon), and with `"pycniDaemon": false` in the configuration.
NO_DAEMON_ENV = "PYCNI_NO_DAEMON"
NO_DAEMON_VALUES = ("1", "true", "yes")
FAULT_ENV = "PYCNI_FAULT"
CONFIG_KEY = "pycniDaemon"
DEBUG_ENV = "PYCNI_DAEMON_DEBUG"  # print the daemon's refusals on stderr

# What the C shim execs in the installation's interpreter (`python -I -c CODE ARG...`): the verb run
# here after the daemon could not take it; the Python launcher itself (it decides about the handoff when
# the configuration names CONFIG_KEY); a subcommand (`pycni daemon ...`); the try-again answer.
EXEC_STANDALONE = "from pycni.cli import run_standalone; run_standalone('%s')"
EXEC_LAUNCHER = {"pycni": "from pycni.cli import main_bridge; main_bridge()",
                 "pycni-host-local": "from pycni.cli import main_host_local; main_host_local()"}
EXEC_TRY_AGAIN = "from pycni.daemon.client import try_again_main; try_again_main()"

# Why a request that was sent got no usable answer: reason -> the error's msg (try_again()).
TRY_AGAIN_MSGS = {"timeout": "the pycni daemon did not answer in time",
                  "failed": "the pycni daemon failed during the request",
                  "garbage": "the pycni daemon answered garbage"}
# Their details (printf formats: the shim fills them in as well).
TIMEOUT_DETAILS = "%g s on %s"  # the reply timeout in seconds, the socket
CLOSED_DETAILS = "connection closed after %d of %d bytes"  # of the header or of the body
BAD_LENGTH = "bad frame length %d"  # also the daemon's refusal of such a request
NOT_AN_ANSWER = "not a valid answer"  # a frame whose JSON is not an answer


class Refused(Exception):
    """The request is not served; the client runs the verb itself."""


class FrameError(ValueError):
    """A frame length out of bounds."""


# -- framing ------------------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def body_size(header: bytes) -> int:
    size = int.from_bytes(header, "big")
    if not 0 < size <= MAX_FRAME:
        raise FrameError(BAD_LENGTH % size)
    return size


def recv_exact(sock, n: int) -> bytes:
    """Exactly n bytes of a frame from a stream socket; EOFError if the peer closes first."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            raise EOFError(CLOSED_DETAILS % (got, n))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# -- encoding -----------------------------------------------------------------------------------------


def _dumps(value: dict) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode("ascii")  # ensure_ascii: the protocol's encoding


def encode_request(plugin: str, environ: dict[str, str], stdin: bytes, deadline_ms: int) -> bytes:
    """The request frame (environment strings may hold surrogateescape'd bytes: they travel as \\udcXX)."""
    import binascii

    values = (PROTOCOL, _version(), plugin, deadline_ms, environ, binascii.b2a_base64(stdin, newline=False).decode())
    return frame(_dumps(dict(zip(REQUEST_KEYS, values))))


def encode_answer(status: int, stdout: str, stderr: str) -> bytes:
    return frame(_dumps(dict(zip(ANSWER_KEYS, (status, stdout, stderr)))))


def encode_refusal(why: str) -> bytes:
    return frame(_dumps({REFUSED_KEY: why}))


def _version() -> str:
    from .. import __version__

    return __version__


# -- decoding -----------------------------------------------------------------------------------------


def decode_answer(body: bytes) -> tuple[int, str, str] | str:
    """(status, stdout, stderr), or the reason of a refusal (a str); ValueError when it is neither."""
    import json

    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(NOT_AN_ANSWER) from None
    if not isinstance(answer, dict):
        raise ValueError(NOT_AN_ANSWER)  # noqa: TRY004 - the peer sent bad data: a value error, not our bug
    if REFUSED_KEY in answer:
        return str(answer[REFUSED_KEY])
    status, stdout, stderr = (answer.get(k, "" if k == "stderr" else None) for k in ANSWER_KEYS)
    if (not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 255
            or not isinstance(stdout, str) or not isinstance(stderr, str)):
        raise ValueError(NOT_AN_ANSWER)
    return status, stdout, stderr


def decode_request(body: bytes) -> tuple[str, dict[str, str], bytes, int]:
    """The daemon's side: (plugin, environment, stdin, the client's deadline in CLOCK_MONOTONIC ms).
    Refused on anything that is not a request of this protocol and this pycni version."""
    import json

    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(f"request is not JSON: {exc}") from None
    return check_request(req)


def check_request(req: object) -> tuple[str, dict[str, str], bytes, int]:
    import base64
    import binascii

    if not isinstance(req, dict):
        raise Refused("request is not a JSON object")
    proto, version, plugin, until, env, data = (req.get(k) for k in REQUEST_KEYS)
    if proto != PROTOCOL:
        raise Refused(f"protocol {proto!r}, this daemon speaks {PROTOCOL}")
    if version != _version():
        raise Refused(f"pycni version {version!r}, this daemon runs {_version()}")
    if not isinstance(plugin, str) or plugin not in PLUGINS:  # (a dict is not even hashable: found by fuzzing)
        raise Refused(f"unknown plugin {plugin!r}")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise Refused("env must be an object of strings")
    if not isinstance(data, str):
        raise Refused("stdin must be a base64 string")
    if not isinstance(until, int) or isinstance(until, bool) or until < 0:
        raise Refused("deadline must be a CLOCK_MONOTONIC time in milliseconds")
    try:
        stdin = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("stdin is not valid base64") from None
    return plugin, env, stdin, until


# -- the client's decisions -----------------------------------------------------------------------------


def socket_path(environ: dict[str, str]) -> str:
    return environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def reply_timeout_ms(environ: dict[str, str]) -> int:
    """$PYCNI_DAEMON_TIMEOUT in milliseconds when it is plain decimal seconds in (0, 1 day], else the default."""
    text = environ.get(REPLY_TIMEOUT_ENV, "")
    whole, dot, frac = text.partition(".")
    if not (whole.isdigit() and whole.isascii() and (not dot or (frac.isdigit() and frac.isascii()))):
        return DEFAULT_REPLY_TIMEOUT_MS
    ms = int(whole) * 1000 + int((frac + "000")[:3] if dot else "0")
    return ms if 0 < ms <= MAX_REPLY_TIMEOUT_MS else DEFAULT_REPLY_TIMEOUT_MS


def handoff_allowed(environ: dict[str, str], stdin: bytes) -> bool:
    if environ.get(NO_DAEMON_ENV, "").lower() in NO_DAEMON_VALUES or environ.get(FAULT_ENV):
        return False
    if f'"{CONFIG_KEY}"'.encode() in stdin:
        import json

        try:
            data = json.loads(stdin)
        except (UnicodeDecodeError, ValueError, RecursionError):  # the verb reports the bad configuration either way
            return True
        return not (isinstance(data, dict) and data.get(CONFIG_KEY) is False)
    return True


def try_again(reason: str, details: str, stdin: bytes) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of CNI error 11 after the daemon failed mid-request. Its cniVersion
    is the configuration's, as for every other error (SPEC.md "Error": "the protocol version in use";
    spec.version.for_error)."""
    import json

    from ..spec import version
    from ..spec.errors import TRY_AGAIN_LATER, CNIError

    msg = TRY_AGAIN_MSGS[reason]
    details = details[:300]
    doc = CNIError(TRY_AGAIN_LATER, msg, details).to_dict(version.for_error(version.declared(stdin)))
    return 1, json.dumps(doc), f"pycni: {msg}: {details}\n"


# -- the C header ---------------------------------------------------------------------------------------


def c_header() -> str:
    """Every definition above that shim.c needs, as C macros."""

    from ..spec.version import LATEST

    def s(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    defs = [
        ("PYCNI_VERSION", s(_version())),
        ("PYCNI_LATEST_CNI_VERSION", s(LATEST)),  # for the one error the shim prints itself: no interpreter
        ("WIRE_PROTOCOL", str(PROTOCOL)),
        ("WIRE_DEFAULT_SOCKET", s(DEFAULT_SOCKET)),
        ("WIRE_SOCKET_ENV", s(SOCKET_ENV)),
        ("WIRE_HEADER_BYTES", str(HEADER_BYTES)),
        ("WIRE_MAX_STDIN", str(MAX_STDIN)),
        ("WIRE_MAX_FRAME", str(MAX_FRAME)),
        ("WIRE_ACK", f"'\\x{ACK[0]:02x}'"),
        ("WIRE_PLUGIN_BRIDGE", s(PLUGINS[0])),
        ("WIRE_PLUGIN_HOST_LOCAL", s(PLUGINS[1])),
        ("WIRE_CONNECT_TIMEOUT_MS", str(CONNECT_TIMEOUT_MS)),
        ("WIRE_REPLY_TIMEOUT_ENV", s(REPLY_TIMEOUT_ENV)),
        ("WIRE_DEFAULT_REPLY_TIMEOUT_MS", f"{DEFAULT_REPLY_TIMEOUT_MS}LL"),
        ("WIRE_MAX_REPLY_TIMEOUT_MS", f"{MAX_REPLY_TIMEOUT_MS}LL"),
        ("WIRE_NO_DAEMON_ENV", s(NO_DAEMON_ENV)),
        ("WIRE_NO_DAEMON_VALUES", "{" + ", ".join(s(v) for v in NO_DAEMON_VALUES) + ", 0}"),
        ("WIRE_FAULT_ENV", s(FAULT_ENV)),
        ("WIRE_CONFIG_KEY_QUOTED", s(f'"{CONFIG_KEY}"')),
        ("WIRE_DEBUG_ENV", s(DEBUG_ENV)),
        ("WIRE_EXEC_STANDALONE", s(EXEC_STANDALONE)),
        ("WIRE_EXEC_LAUNCHER_BRIDGE", s(EXEC_LAUNCHER[PLUGINS[0]])),
        ("WIRE_EXEC_LAUNCHER_HOST_LOCAL", s(EXEC_LAUNCHER[PLUGINS[1]])),
        ("WIRE_EXEC_TRY_AGAIN", s(EXEC_TRY_AGAIN)),
        ("WIRE_TIMEOUT_DETAILS", s(TIMEOUT_DETAILS)),
        ("WIRE_CLOSED_DETAILS", s(CLOSED_DETAILS)),
        ("WIRE_BAD_LENGTH", s(BAD_LENGTH)),
        ("WIRE_NOT_AN_ANSWER", s(NOT_AN_ANSWER)),
        ("WIRE_REFUSED_KEY", s(REFUSED_KEY)),
    ]
    defs += [(f"WIRE_KEY_{key.upper()}", s(key)) for key in REQUEST_KEYS + ANSWER_KEYS]
    defs += [(f"WIRE_TRY_AGAIN_{reason.upper()}", s(reason)) for reason in TRY_AGAIN_MSGS]
    lines = ["/* Generated by `python -m pycni.daemon.wire --c-header` from src/pycni/daemon/wire.py",
             " * (the one definition of the daemon's wire protocol): do not edit. */",
             "#ifndef PYCNI_WIRE_H", "#define PYCNI_WIRE_H"]
    lines += [f"#define {name} {value}" for name, value in defs]
    lines += ["#endif", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--c-header"]:
        print("usage: python -m pycni.daemon.wire --c-header", file=sys.stderr)
        return 2
    sys.stdout.write(c_header())
    return 0


if __name__ == "__main__":
    sys.exit(main())
