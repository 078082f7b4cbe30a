"""What a node holds per attachment (network, container ID, ifname), read without changing anything:
the host-local lease files of a network directory and the host veths pycni created, which carry
the attachment in their alias (`pycni:<network id>:<key>:<network>:<ifname>:<containerID>`,
bridge/verbs.py veth_alias). Shared by `pycni leases` and `pycni gc`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from . import pools

ALIAS_PREFIX = "pycni:"


@dataclass(frozen=True)
class LeaseFile:
    network: str
    address: str
    container_id: str | None  # None: an empty or unreadable lease file
    ifname: str | None  # None: the ID-only format of old plugins
    age: float | None
    path: str


@dataclass(frozen=True)
class Veth:
    network: str
    container_id: str
    ifname: str
    name: str


def read_lease(path: str) -> tuple[str | None, str | None]:
    """(container ID, ifname) of a lease file, as ipam/store.py writes it ("id\\r\\nifname")."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None, None
    lines = data.split("\r\n") if "\r\n" in data else data.splitlines()
    cid = lines[0].strip() if lines and lines[0].strip() else None
    ifname = lines[1].strip() if cid and len(lines) > 1 and lines[1].strip() else None
    return cid, ifname


def leases(data_dir: str, network: str) -> list[LeaseFile]:
    path = os.path.join(data_dir, network)
    now = time.time()
    out = []
    for ip in sorted(pools.leased_addresses(path), key=lambda a: (a.version, a)):
        file = os.path.join(path, str(ip))
        try:
            st = os.lstat(file)
        except OSError:
            continue  # released meanwhile
        cid, ifname = read_lease(file)
        out.append(LeaseFile(network, str(ip), cid, ifname, now - st.st_mtime, file))
    return out


def networks_in(data_dir: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, n))
                      and not os.path.islink(os.path.join(data_dir, n)))
    except OSError:
        return []


def veths() -> list[Veth]:
    """pycni's host veths in this network namespace."""
    from ..bridge import links, netlink

    out = []
    with netlink.handles() as nl:
        found = links.links_with_alias_prefix(nl, ALIAS_PREFIX)
    for link in found:
        parts = link.alias.split(":", 5)
        if len(parts) == 6:
            out.append(Veth(parts[3], parts[5], parts[4], link.name))
    return out
