"""The kernel settings the agent and the NetworkPolicy controller need in the node's namespace
(written by pycni.sysctl, the one writer; here: which settings, and a failure is a logged warning)."""

from __future__ import annotations

import logging

from .. import sysctl

log = logging.getLogger("pycni.agent")


def ensure(path: str, value: str) -> bool:
    """Set /proc/sys/`path` to `value` unless it already is; False (and a warning) when it cannot."""
    try:
        if sysctl.write(path, value):
            log.info("set %s = %s", path.replace("/", "."), value)
        return True
    except OSError as exc:
        log.warning("cannot set %s: %s", path, exc)
        return False


def forwarding(version: int) -> bool:
    """The node routes pod traffic of this IP version."""
    return ensure(sysctl.forwarding(version), "1")


def bridge_netfilter() -> list[str]:
    """`net.bridge.bridge-nf-call-ip{,6}tables = 1`: bridged pod-to-pod traffic then passes the IP
    hooks (kube-proxy's DNAT for a backend on the client's own bridge; NetworkPolicy between pods of
    one node). Only where br_netfilter is loaded (the sysctls exist); returns what is missing."""
    missing = []
    for fam in ("iptables", "ip6tables"):
        path = f"net/bridge/bridge-nf-call-{fam}"
        if not sysctl.exists(path) or not ensure(path, "1"):
            missing.append(path.replace("/", "."))
    return missing
