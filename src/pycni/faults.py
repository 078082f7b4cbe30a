"""Crash injection for tests: `point(name)` kills the plugin with SIGKILL when PYCNI_FAULT names it.

TEST-ONLY. The crash-consistency tests (tests/netns/test_crash.py, integration/stress.py) set
`PYCNI_FAULT=<point>[#<n>][,<point>...]` to kill the plugin at a chosen step of ADD or DEL, exactly
as a node crash, an OOM kill or a runtime's timeout would, and then check that a DEL or a GC
restores the node. `#n` fires on the n-th time the point is reached (default: the first).

Harmless in production: without PYCNI_FAULT (runtimes never set it) a point costs one function
call and one set lookup; the environment is read once, on the first call; and the only thing a
point can ever do is kill the plugin's own process - which is what the kernel does to it anyway
on an OOM or what a runtime does on a timeout, and which every verb must survive (docs/reliability.md).
"""

from __future__ import annotations

import os

_armed: dict[str, int] | None = None  # point -> which hit kills (1 = first)
_hits: dict[str, int] = {}


def _load() -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in os.environ.get("PYCNI_FAULT", "").split(","):
        name, _, nth = item.strip().partition("#")
        if name:
            armed[name] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return armed


def point(name: str) -> None:
    """A named step; SIGKILL this process here when PYCNI_FAULT asks for it."""
    global _armed
    if _armed is None:
        _armed = _load()
    if not _armed or name not in _armed:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _armed[name]:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
