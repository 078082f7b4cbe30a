"""The warm path: a long-lived pycni daemon serving the CNI verbs in-process (server), and the thin
client the exec'd `pycni` / `pycni-host-local` use to hand a request over to it (client).

Protocol (one request per connection, over a root-only unix socket, default /run/pycni/pycni.sock):
both directions are one frame, a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.

  request  {"proto": 1, "version": "<pycni version>", "plugin": "pycni" | "pycni-host-local",
            "ns": "<net ns inode>:<pid ns inode>", "env": {the caller's whole environment},
            "stdin": "<base64 of stdin>"}
  answer   {"status": <exit status>, "stdout": "<the one document, or empty>", "stderr": "<logs>"}
      or   {"refused": "<why>"}  - nothing was done: the client runs the verb itself.

The daemon refuses a request from a peer that is not root (SO_PEERCRED), of another protocol or
pycni version (so an upgrade never mixes an old daemon with a new plugin), from another network or
PID namespace than its own (the plugin works on the network namespace it runs in, and a CNI_NETNS
like /proc/<pid>/ns/net names a process of the caller's PID namespace), and any request it cannot
parse. This package's __init__ and client import nothing heavy: they run in every exec'd plugin.
"""

PROTOCOL = 1
DEFAULT_SOCKET = "/run/pycni/pycni.sock"
SOCKET_ENV = "PYCNI_SOCKET"  # overrides DEFAULT_SOCKET (tests, benchmarks, unusual layouts)
MAX_FRAME = 4 << 20  # a request carries at most 1 MiB of stdin (base64) plus the environment


def namespaces() -> str:
    """"<net ns inode>:<pid ns inode>" of the calling thread: a request is served only by a daemon
    in the same network and PID namespaces as the plugin that hands it over."""
    import os

    return f"{os.stat('/proc/thread-self/ns/net').st_ino}:{os.stat('/proc/thread-self/ns/pid').st_ino}"


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
