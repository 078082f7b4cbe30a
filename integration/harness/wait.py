"""Polling with a deadline: the one loop every suite uses to wait for a daemon, a pod, a route or a lease."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a check that is not satisfied yet (retried until the deadline)."""


def retry(fn: Callable[[], T], what: str, *, timeout: float, interval: float = 0.5,
          retry_on: tuple[type[BaseException], ...] = (NotYet,), fail: type[Exception] = TimeoutError) -> T:
    """fn() until it returns without raising one of `retry_on` (tried at least once, then every `interval`
    seconds for `timeout` seconds); its result. At the deadline: `fail("<what>: not within <timeout>s: <last
    error>")`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except retry_on as exc:
            if time.monotonic() > deadline:
                raise fail(f"{what}: not within {timeout:g}s: {exc}") from None
            time.sleep(interval)


def wait_for(pred: Callable[[], T], what: str, *, timeout: float, interval: float = 0.5,
             retry_on: tuple[type[BaseException], ...] = (), fail: type[Exception] = TimeoutError) -> T:
    """pred() until it returns something true (errors in `retry_on` count as "not yet"); that value."""
    def once() -> T:
        got = pred()
        if not got:
            raise NotYet(f"still {got!r}")
        return got
    return retry(once, what, timeout=timeout, interval=interval, retry_on=(NotYet, *retry_on), fail=fail)
