"""Cheap capability probes for STATUS and DEL: no pyroute2 import, nothing changed.

`host_link_names` reads /proc/net/dev, `link_kind_raw` asks rtnetlink over the channel of
`netlink` (its lookup imports nothing), `can_admin_network` reads the effective capabilities of the process.
"""

from __future__ import annotations

from . import netlink


def host_link_names() -> set[str]:
    """Names of the links of the current netns without netlink (cheap: no pyroute2 import)."""
    names = set()
    with open("/proc/net/dev") as fh:
        for line in fh.readlines()[2:]:
            names.add(line.split(":", 1)[0].strip())
    return names



def link_kind_raw(name: str) -> str | None:
    """Kind of link `name` ("bridge", "veth", "" when unknown), None when absent - over a raw
    rtnetlink socket, without pyroute2, so STATUS stays cheap. Raises CNIError 101 when rtnetlink
    cannot be reached."""
    channel = netlink.Channel()
    try:
        link = channel.get_link(name)
    finally:
        channel.close()
    return None if link is None else link.kind


CAP_NET_ADMIN = 12  # linux/capability.h: the bit number in the capability sets


def can_admin_network() -> bool:
    """CAP_NET_ADMIN in the effective set (/proc/self/status CapEff): needed to create bridges and veths."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    except OSError:
        pass
    return False
