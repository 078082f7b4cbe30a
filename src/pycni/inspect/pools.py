"""A network's address pool: its host-local ranges, how many addresses each holds and how many are
leased - counted from the store's file names (`<dataDir>/<network>/<ip>`, ipam/store.py), without
taking the store's lock or reading a lease. Shared by `pycni status`, `pycni leases` and the
daemon's `pycni_ipam_*` metrics."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from pydantic import ValidationError

from ..ipam import config
from ..ipam.ranges import Range
from ..spec.errors import CNIError


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
    """The pool of a host-local `ipam` section, decoded by host-local's own rules (ipam/config.py); None when
    the section is not a valid host-local configuration - the plugin itself reports that, here it is just
    not a pool."""
    try:
        model = config.IPAMModel.model_validate(ipam)
        sets = config.build_range_sets(config.configured_ranges(model))
        return Pool(network, config.data_dir(model.dataDir), tuple(r for rs in sets for r in rs.ranges))
    except (ValidationError, CNIError):
        return None


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
