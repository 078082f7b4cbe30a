"""A network's address pool: its host-local ranges, how many addresses each holds and how many are
leased - counted from the store's file names (`<dataDir>/<network>/<ip>`, ipam/store.py), without
taking the store's lock or reading a lease. Shared by `pycni status`, `pycni leases` and the
daemon's `pycni_ipam_*` metrics."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..ipam.ranges import Range
from ..spec.errors import CNIError

DEFAULT_DATA_DIR = "/var/lib/cni/networks"  # host-local's default (ipam/config.py)


@dataclass(frozen=True)
class Pool:
    network: str
    data_dir: str
    ranges: tuple[Range, ...]

    @property
    def path(self) -> str:
        return os.path.join(self.data_dir, self.network)


@dataclass(frozen=True)
class RangeUse:
    range: str  # "start-end"
    subnet: str
    leased: int
    capacity: int


def capacity(r: Range) -> int:
    """Addresses host-local can hand out from the range: start..end, less the gateway (ranges.py
    already leaves out the network address and the IPv4 broadcast)."""
    n = int(r.end) - int(r.start) + 1
    return n - 1 if r.gateway is not None and r.start <= r.gateway <= r.end else n


def from_ipam(network: str, ipam: dict) -> Pool | None:
    """The pool of a host-local `ipam` section (ranges or the legacy subnet); None if it has none
    that parses - the plugin itself reports such a configuration, here it is just not a pool."""
    raw: list[dict] = []
    if isinstance(ipam.get("subnet"), str):
        raw.append({"subnet": ipam["subnet"], "rangeStart": ipam.get("rangeStart"),
                    "rangeEnd": ipam.get("rangeEnd"), "gateway": ipam.get("gateway")})
    for rs in ipam.get("ranges") or []:
        if isinstance(rs, list):
            raw += [r for r in rs if isinstance(r, dict)]
    ranges = []
    for r in raw:
        try:
            ranges.append(Range.build(r.get("subnet"), r.get("rangeStart"), r.get("rangeEnd"), r.get("gateway")))
        except CNIError:
            continue
    data_dir = ipam.get("dataDir") if isinstance(ipam.get("dataDir"), str) and ipam.get("dataDir") else DEFAULT_DATA_DIR
    if not ranges or not os.path.isabs(data_dir):
        return None
    return Pool(network, os.path.normpath(data_dir), tuple(ranges))


def leased_addresses(path: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses with a lease file in a network directory (canonical names only, as the store)."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    out = []
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            continue
        if str(ip) == name:
            out.append(ip)
    return out


def usage(pool: Pool) -> list[RangeUse]:
    ips = leased_addresses(pool.path)
    return [RangeUse(str(r), str(r.subnet), sum(1 for ip in ips if r.contains(ip)), capacity(r))
            for r in pool.ranges]
