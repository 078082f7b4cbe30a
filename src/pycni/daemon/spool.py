"""The standalone spool: requests the exec'd plugin served itself because the daemon was absent or
refused, written down for the daemon to count (metric `pycni_standalone_requests_total`).

The exec'd plugin appends one line per such request to `standalone.spool` next to the daemon's
socket (`<plugin> <verb> <reason>`); the daemon takes the file in when it starts and again on every
metrics scrape (rename, read, unlink), so the counts reach Prometheus as soon as a daemon runs.
Cheap on purpose - this runs on the cold path, before any heavy import: only `os`, one open(2) with
O_APPEND and one write(2). The plugin never creates the file: the daemon does (ensure(), at start and
after each drain), so a node that never ran a daemon (and a test run on a workstation) keeps no
spool, while one whose daemon stopped or died keeps counting until the next start. Nothing is
written past MAX_BYTES (a node whose daemon is gone for good does not fill /run); a line lost to
that limit or to the rename race is a count missed, never a request affected. VERSION is not counted: runtimes call it freely and it does no work.
"""

from __future__ import annotations

import os

SPOOL_NAME = "standalone.spool"
MAX_BYTES = 256 << 10
REASONS = ("absent", "refused", "shim")  # no daemon socket answered / the daemon said no / the C shim fell back


def path_for(socket_path: str) -> str:
    return os.path.join(os.path.dirname(socket_path) or ".", SPOOL_NAME)


def _word(value: str) -> str:
    return "".join(c for c in value if c.isalnum() or c in "-_")[:32] or "-"


def record(socket_path: str, plugin: str, verb: str, reason: str) -> None:
    """Append one line; never raises (the request matters, the count does not)."""
    if verb == "VERSION":
        return
    try:
        fd = os.open(path_for(socket_path), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size < MAX_BYTES:
            os.write(fd, f"{_word(plugin)} {_word(verb)} {_word(reason)}\n".encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure(socket_path: str) -> None:
    """Create the (empty) spool if there is none: from now on, plugins that run standalone count."""
    try:
        os.close(os.open(path_for(socket_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600))
    except OSError:
        pass


def drain(socket_path: str) -> list[tuple[str, str, str]]:
    """Take the spool in: [(plugin, verb, reason)]; an empty spool replaces it. A line is counted once."""
    path = path_for(socket_path)
    taken = f"{path}.{os.getpid()}"
    try:
        os.rename(path, taken)
    except OSError:
        ensure(socket_path)
        return []
    ensure(socket_path)
    try:
        fd = os.open(taken, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = os.read(fd, MAX_BYTES + 4096)
        finally:
            os.close(fd)
    except OSError:
        data = b""
    finally:
        try:
            os.unlink(taken)
        except OSError:
            pass
    out = []
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out
