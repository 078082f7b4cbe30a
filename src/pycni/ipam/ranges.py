"""Address ranges and range sets, pure (no I/O).

A Range is one subnet with an optional [rangeStart, rangeEnd] window and a gateway; a RangeSet is
an ordered list of ranges of one family from which a single address is handed out (dual-stack is
two range sets). Defaults and checks follow the reference host-local: gateway = subnet + 1, start =
subnet + 1 (the gateway is skipped when allocating, so the first lease is .2), end = the last
address (IPv4: broadcast excluded), /31 and /32 (/127, /128) refused, no overlaps.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from ..spec.errors import INVALID_CONFIG, CNIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: object, what: str) -> IPAddress:
    """An address, also accepted in CIDR form ("10.1.0.5/24" -> 10.1.0.5), as the reference does."""
    if not isinstance(value, str):
        raise CNIError(INVALID_CONFIG, f"{what} must be a string", repr(value)[:100])
    try:
        return ipaddress.ip_interface(value.strip()).ip
    except ValueError:
        raise CNIError(INVALID_CONFIG, f"invalid IP address in {what}", repr(value)[:100]) from None


@dataclass(frozen=True)
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None

    @classmethod
    def build(cls, subnet: object, start: object = None, end: object = None, gateway: object = None,
              where: str = "range") -> Range:
        if not isinstance(subnet, str) or not subnet:
            raise CNIError(INVALID_CONFIG, f"{where}: subnet is required", repr(subnet)[:100])
        try:
            iface = ipaddress.ip_interface(subnet.strip())
        except ValueError:
            raise CNIError(INVALID_CONFIG, f"{where}: invalid subnet", repr(subnet)[:100]) from None
        net = iface.network
        if net.prefixlen > net.max_prefixlen - 2:
            raise CNIError(INVALID_CONFIG, f"{where}: network {net} too small to allocate from")
        if iface.ip != net.network_address:
            raise CNIError(INVALID_CONFIG, f"{where}: network has host bits set",
                           f"for a /{net.prefixlen} the network address is {net.network_address}")
        first = net.network_address + 1
        last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
        gw = parse_ip(gateway, f"{where}.gateway") if gateway not in (None, "") else first
        if gw not in net:  # the reference does not check this; a gateway off-link is always a mistake
            raise CNIError(INVALID_CONFIG, f"{where}: gateway {gw} not in network {net}")
        lo = parse_ip(start, f"{where}.rangeStart") if start not in (None, "") else first
        hi = parse_ip(end, f"{where}.rangeEnd") if end not in (None, "") else last
        for label, addr in (("rangeStart", lo), ("rangeEnd", hi)):
            if addr.version != net.version or not (int(first) <= int(addr) <= int(last)):
                raise CNIError(INVALID_CONFIG, f"{where}: {label} {addr} not in network {net}")
        if int(lo) > int(hi):  # same family (checked above)
            raise CNIError(INVALID_CONFIG, f"{where}: rangeStart {lo} is after rangeEnd {hi}")
        return cls(net, lo, hi, gw)

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.subnet.version and int(self.start) <= int(ip) <= int(self.end)

    def overlaps(self, other: Range) -> bool:
        return (self.subnet.version == other.subnet.version
                and int(self.start) <= int(other.end) and int(other.start) <= int(self.end))

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True)
class RangeSet:
    ranges: tuple[Range, ...]

    @classmethod
    def build(cls, ranges: list[Range], where: str) -> RangeSet:
        if not ranges:
            raise CNIError(INVALID_CONFIG, f"{where}: empty range set")
        if len({r.subnet.version for r in ranges}) != 1:
            raise CNIError(INVALID_CONFIG, f"{where}: mixed address families in one range set")
        for i, a in enumerate(ranges):
            for b in ranges[i + 1:]:
                if a.overlaps(b):
                    raise CNIError(INVALID_CONFIG, f"{where}: subnets {a.subnet} and {b.subnet} overlap")
        return cls(tuple(ranges))

    @property
    def family(self) -> int:
        return self.ranges[0].subnet.version

    def range_for(self, ip: IPAddress) -> Range | None:
        for r in self.ranges:
            if r.contains(ip):
                return r
        return None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def candidates(self, last_reserved: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
        """Every allocatable address once, round-robin: from last_reserved + 1, wrapping around
        (the reference allocator's order), skipping each range's gateway."""
        for value, r in self.candidate_ints(last_reserved):
            yield type(r.start)(value), r

    def candidate_ints(self, last_reserved: IPAddress | None) -> Iterator[tuple[int, Range]]:
        """`candidates` as integers: the allocator walks past every held lease, and stepping an int
        costs a tenth of stepping an ipaddress object (1,000 held leases: ~0.2 ms instead of ~2 ms)."""
        for lo, hi, gateway, r in self.spans(last_reserved):
            for value in range(lo, hi + 1):  # never steps past the top of the address space
                if value != gateway:
                    yield value, r

    def spans(self, last_reserved: IPAddress | None) -> list[tuple[int, int, int, Range]]:
        """`candidate_ints` as (first, last, gateway or -1, range) spans of integers, in order: what a
        caller that skips many held addresses walks with a plain loop."""
        ranges = self.ranges
        first_range, first_ip = 0, int(ranges[0].start)
        if last_reserved is not None:
            for idx, r in enumerate(ranges):
                if r.contains(last_reserved):
                    if int(last_reserved) < int(r.end):
                        first_range, first_ip = idx, int(last_reserved) + 1
                    else:
                        first_range = (idx + 1) % len(ranges)
                        first_ip = int(ranges[first_range].start)
                    break
        order = list(range(first_range, len(ranges))) + list(range(first_range + 1))
        out = []
        for step, idx in enumerate(order):
            r = ranges[idx]
            if step == 0:
                lo, hi = first_ip, int(r.end)
            elif step == len(order) - 1:  # back in the first range: the part before where we began
                lo, hi = int(r.start), first_ip - 1
            else:
                lo, hi = int(r.start), int(r.end)
            out.append((lo, hi, int(r.gateway) if r.gateway is not None else -1, r))
        return out

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)
