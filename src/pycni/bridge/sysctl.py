"""The bridge plugin's sysctls (reference behaviour), in the calling thread's network namespace.

Node side: forwarding for a gateway, accept_ra=0 on the interfaces whose routes we own. Pod side
(called inside `netns.Pod`): DAD, arp_notify, IPv6 on lo and the interface. The reference plugin
ignores failures of the per-interface sysctls (e.g. no IPv6 in the kernel); forwarding must work.
"""

from __future__ import annotations

from .. import sysctl
from ..spec.errors import KERNEL, CNIError


def write_sysctl(path: str, value: str, *, only_if_different: bool = True, strict: bool = False) -> None:
    """Set /proc/sys/<path> of the current thread's netns; a failure is ignored unless `strict`."""
    try:
        sysctl.write(path, value, only_if_different=only_if_different)
    except OSError as exc:
        if strict:
            raise CNIError(KERNEL, f"failed to set sysctl {path}={value}", exc.strerror or str(exc)) from None


def enable_forwarding(version: int) -> None:
    """Reference `enableIPForward`: a gateway must route (net.ipv4.ip_forward / ipv6 forwarding)."""
    write_sysctl(sysctl.forwarding(version), "1", strict=True)


def pod_sysctls(ifname: str, enabledad: bool, has_v6: bool) -> None:
    """Container-side sysctls of the reference bridge (call inside `Pod`).

    accept_dad=0 unless `enabledad` (then accept_dad=1 + enhanced_dad=1), arp_notify=1; for IPv6
    addresses the reference IPAM helper also enables IPv6 on lo and the interface and sets
    keep_addr_on_down=1.
    """
    if enabledad:
        write_sysctl(f"net/ipv6/conf/{ifname}/enhanced_dad", "1")
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "1")
    else:
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
    write_sysctl(f"net/ipv4/conf/{ifname}/arp_notify", "1")
    if has_v6:
        for dev in ("lo", ifname):
            write_sysctl(f"net/ipv6/conf/{dev}/disable_ipv6", "0")
        write_sysctl(f"net/ipv6/conf/{ifname}/keep_addr_on_down", "1")

