"""The kernel settings the agent and the NetworkPolicy controller need in the node's namespace."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("pycni.agent")


def ensure(path: str, value: str) -> bool:
    """Set /proc/sys/`path` to `value` unless it already is; False (and a warning) when it cannot."""
    full = os.path.join("/proc/sys", path)
    try:
        with open(full) as f:
            if f.read().strip() == value:
                return True
        with open(full, "w") as f:
            f.write(value)
        log.info("set %s = %s", path.replace("/", "."), value)
        return True
    except OSError as exc:
        log.warning("cannot set %s: %s", path, exc)
        return False


def bridge_netfilter() -> list[str]:
    """`net.bridge.bridge-nf-call-ip{,6}tables = 1`: bridged pod-to-pod traffic then passes the IP
    hooks (kube-proxy's DNAT for a backend on the client's own bridge; NetworkPolicy between pods of
    one node). Only where br_netfilter is loaded (the sysctls exist); returns what is missing."""
    missing = []
    for fam in ("iptables", "ip6tables"):
        path = f"net/bridge/bridge-nf-call-{fam}"
        if not os.path.exists(os.path.join("/proc/sys", path)) or not ensure(path, "1"):
            missing.append(path.replace("/", "."))
    return missing
