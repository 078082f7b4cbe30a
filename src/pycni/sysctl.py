"""The one writer of kernel parameters (/proc/sys) for pycni: the bridge plugin and the node agent.

A parameter is written in the network namespace of the calling thread (/proc/sys/net follows the
thread's netns: `bridge.netns.Pod` writes the pod's). Which parameters are set, and whether a failure
matters, is the caller's rule: `bridge.sysctl` (the reference bridge's settings) and `agent.sysctl`.
"""

from __future__ import annotations

import os

PROC_SYS = "/proc/sys"


def forwarding(version: int) -> str:
    """The parameter that makes this namespace route IPv4 or IPv6 packets."""
    return "net/ipv4/ip_forward" if version == 4 else "net/ipv6/conf/all/forwarding"


def exists(path: str) -> bool:
    return os.path.exists(os.path.join(PROC_SYS, path))


def write(path: str, value: str, *, only_if_different: bool = True) -> bool:
    """Set `path` (e.g. "net/ipv4/ip_forward") to `value`; False when it already was (and
    `only_if_different`: a read is cheaper than a write, which some parameters act on even when
    the value is the same). Raises OSError when it cannot be read or written."""
    full = os.path.join(PROC_SYS, path)
    if only_if_different:
        with open(full) as fh:
            if fh.read().strip() == value:
                return False
    with open(full, "w") as fh:
        fh.write(value)
    return True
