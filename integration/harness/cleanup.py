"""Undo actions that always run, and the harness's log line."""

from __future__ import annotations

import atexit
import signal
from collections.abc import Callable


def log(msg: str) -> None:
    print(f"[harness] {msg}", flush=True)


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """SIGTERM (a CI timeout, a kill) would end Python without finalizers or atexit: turn it into the
    KeyboardInterrupt pytest handles by tearing fixtures down (unless someone already handles SIGTERM)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


class Cleanup:
    """Undo actions, run newest first; each runs once and its errors never stop the others. Registered with
    atexit as a safety net for a run that ends before its finalizers (SIGTERM is turned into KeyboardInterrupt
    by the suites' conftest, so pytest tears fixtures down)."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self.errors: list[str] = []
        atexit.register(self.run_all)

    def add(self, what: str, fn: Callable[[], object]) -> None:
        self._actions.append((what, fn))

    def run_all(self) -> None:
        while self._actions:
            what, fn = self._actions.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep going: the point is to remove everything we can
                self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
                log(f"cleanup of {what} failed: {exc}")
