"""The warm path: a long-lived pycni daemon serving the CNI verbs in-process (server), and the thin
client the exec'd `pycni` / `pycni-host-local` use to hand a request over to it (client).

Protocol (one request per connection, over a root-only unix socket, default /run/pycni/pycni.sock):
both directions are one frame, a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.

  request  {"proto": 2, "version": "<pycni version>", "plugin": "pycni" | "pycni-host-local",
            "deadline": <CLOCK_MONOTONIC milliseconds when the client gives up>,
            "env": {the caller's whole environment}, "stdin": "<base64 of stdin>"}
  answer   {"status": <exit status>, "stdout": "<the one document, or empty>", "stderr": "<logs>"}
      or   {"refused": "<why>"}  - nothing was done: the client runs the verb itself.
  then     the client sends one byte, ACK (0x06), once it has the answer and will use it; an ADD
           whose answer is not acknowledged (the client gave up or died) is undone by the daemon.

Who may call and in whose view (peer.py: uid 0, the daemon's capabilities, the same user, mount,
network, PID and time namespaces - all read from the kernel, nothing the request says about itself),
which executables it runs (cni_path.py), and the deadlines (deadline.py): docs/security.md. A request
of another protocol or pycni version is refused too (an upgrade never mixes an old daemon with a new
plugin). This package's __init__ and client import nothing heavy: they run in every exec'd plugin.
"""

PROTOCOL = 2
DEFAULT_SOCKET = "/run/pycni/pycni.sock"
SOCKET_ENV = "PYCNI_SOCKET"  # overrides DEFAULT_SOCKET (tests, benchmarks, unusual layouts)
MAX_FRAME = 4 << 20  # a request carries at most 1 MiB of stdin (base64) plus the environment
ACK = b"\x06"  # the client's acknowledgement of an answer


class Refused(Exception):
    """The request is not served; the client runs the verb itself."""


def recv_exact(sock, n: int) -> bytes:
    """Exactly n bytes of a frame from a stream socket; EOFError if the peer closes first."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
