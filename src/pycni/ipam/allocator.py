"""The host-local allocator, pure logic over a small store interface (no I/O of its own).

Rules (those of the reference host-local, plus the store policy of docs/ipam-store.md):
  * each range set yields exactly one address per (containerID, ifname); asking twice is an error
    (SPEC.md "ADD": a container's attachment is created once);
  * a requested address must fall in a range set, must not be that range's gateway, must be free,
    and every requested address must be used, else nothing is allocated;
  * otherwise addresses are handed out round-robin from the last reserved one;
  * the checks that need no write (duplicate attachment, requested addresses) come before any write,
    so such a failure writes nothing (beyond reclaiming empty lease files); a later failure (a taken
    requested address, a full range set) releases what this call reserved - only the round-robin
    cursor stays advanced, as in the reference.
The caller holds the store lock for the whole call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Protocol

from ..spec.errors import ADDRESS_EXHAUSTED, ADDRESS_UNAVAILABLE, CNIError
from ..spec.result import IPConfig
from .lease import Lease
from .ranges import IPAddress, RangeSet

log = logging.getLogger("pycni.ipam")


class Store(Protocol):
    def leases(self) -> list[Lease]: ...
    def held(self, family: int) -> AbstractSet[int]: ...  # addresses of the non-empty leases, as integers
    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_id: int) -> bool: ...
    def release(self, ip: IPAddress) -> None: ...
    def last_reserved(self, range_id: int) -> IPAddress | None: ...


def _reclaim_empty(store: Store, leases: list[Lease]) -> list[Lease]:
    """docs/ipam-store.md: an empty lease file under the lock is an unfinished write of a dead writer."""
    empty = [lease for lease in leases if lease.empty]
    for lease in empty:
        log.warning("reclaiming empty lease file for %s (a writer died mid-write)", lease.ip)
        store.release(lease.ip)
    return [lease for lease in leases if not lease.empty] if empty else leases


def owned_by(leases: Iterable[Lease], container_id: str, ifname: str) -> list[Lease]:
    cid = container_id.strip()
    return [lease for lease in leases if lease.container_id == cid and lease.ifname == ifname]


def allocate(range_sets: Iterable[RangeSet], requested: Iterable[IPAddress], store: Store,
             container_id: str, ifname: str) -> list[IPConfig]:
    sets = list(range_sets)
    leases = _reclaim_empty(store, store.leases())
    # per family, as integers (what _reserve_next compares); kept up to date by the daemon's lease cache
    used = {family: store.held(family) for family in {rset.family for rset in sets}}
    # Everything that can be decided without writing is decided first: a request that cannot succeed
    # leaves no trace, not even an advanced round-robin cursor (which a reserve-then-release would).
    wanted = _match_requested(sets, list(requested), owned_by(leases, container_id, ifname), container_id, ifname)
    reserved: list[IPAddress] = []
    out: list[IPConfig] = []
    try:
        for idx, rset in enumerate(sets):
            want = wanted.get(idx)
            if want is not None:
                ip = _reserve_requested(rset, want, idx, store, container_id, ifname)
            else:
                ip = _reserve_next(rset, idx, used[rset.family], store, container_id, ifname)
            reserved.append(ip)
            rng = rset.range_for(ip)
            assert rng is not None
            out.append(IPConfig(address=f"{ip}/{rng.subnet.prefixlen}",
                                gateway=str(rng.gateway) if rng.gateway else None))
    except BaseException:
        for ip in reserved:
            store.release(ip)
        raise
    return out


def _match_requested(sets: list[RangeSet], requested: list[IPAddress], mine: list[Lease],
                     container_id: str, ifname: str) -> dict[int, IPAddress]:
    """The pure checks of an ADD: no set already holds a lease of this attachment, and every requested
    address falls in a distinct range set and is not that range's gateway. Returns set index -> address."""
    pending = list(requested)
    wanted: dict[int, IPAddress] = {}
    for idx, rset in enumerate(sets):
        for lease in mine:
            if rset.range_for(lease.ip):
                raise CNIError(ADDRESS_UNAVAILABLE,
                               f"{lease.ip} has been allocated to {container_id}, duplicate allocation is not "
                               f"allowed", f"range set {idx}; interface {ifname}")
        want = next((ip for ip in pending if rset.range_for(ip)), None)
        if want is None:
            continue
        pending.remove(want)
        rng = rset.range_for(want)
        assert rng is not None
        if want == rng.gateway:
            raise CNIError(ADDRESS_UNAVAILABLE, f"requested ip {want} is subnet's gateway")
        wanted[idx] = want
    if pending:
        raise CNIError(ADDRESS_UNAVAILABLE,
                       "failed to allocate all requested IPs: " + " ".join(str(ip) for ip in pending),
                       "a requested address is in no range set, or two are in the same set")
    return wanted


def _reserve_requested(rset: RangeSet, ip: IPAddress, idx: int, store: Store, cid: str, ifname: str) -> IPAddress:
    if not store.reserve(ip, cid, ifname, idx):
        raise CNIError(ADDRESS_UNAVAILABLE, f"requested IP address {ip} is not available in range set {rset}")
    return ip


def _reserve_next(rset: RangeSet, idx: int, used: AbstractSet[int], store: Store, cid: str, ifname: str) -> IPAddress:
    # Addresses known to be taken are skipped without touching the disk, so the cost of an ADD does
    # not grow with the number of leases held near the cursor.
    for lo, hi, gateway, rng in rset.spans(store.last_reserved(idx)):
        for value in range(lo, hi + 1):  # a plain loop: with 1,000 leases held it runs 1,000 times
            if value in used or value == gateway:
                continue
            ip = type(rng.start)(value)
            if store.reserve(ip, cid, ifname, idx):
                return ip
    raise CNIError(ADDRESS_EXHAUSTED, f"no IP addresses available in range set: {rset}",
                   f"range set {idx} is full; DEL an attachment or widen the range")


def full_sets(range_sets: Iterable[RangeSet], leases: Iterable[Lease]) -> list[int]:
    """STATUS: the indexes of the range sets in which an ADD would find no free address (empty lease
    files do not count: ADD reclaims them)."""
    used: dict[int, set[int]] = {4: set(), 6: set()}
    for lease in leases:
        if not lease.empty:
            used[lease.ip.version].add(int(lease.ip))
    return [idx for idx, rset in enumerate(range_sets)
            if all(value in used[rset.family] for value, _ in rset.candidate_ints(None))]


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """Release every lease of (containerID, ifname); the ID-only leases of old plugins when none match
    (the reference's backwards-compatible ReleaseByID)."""
    leases = store.leases()
    victims = owned_by(leases, container_id, ifname)
    if not victims:
        cid = container_id.strip()
        victims = [lease for lease in leases if lease.legacy and lease.container_id == cid]
    for lease in victims:
        store.release(lease.ip)
    return [lease.ip for lease in victims]


def collect_garbage(store: Store, valid: AbstractSet[tuple[str, str]]) -> list[IPAddress]:
    """SPEC.md "GC": release every lease whose attachment is not in `valid`.

    ID-only leases (old format) are kept while any valid attachment has that container ID; empty
    and unreadable files have no owner that could be valid, so they go too."""
    valid_ids = {cid for cid, _ in valid}
    released = []
    errors: list[CNIError] = []
    for lease in store.leases():
        if lease.container_id is None:
            keep = False
        elif lease.legacy:
            keep = lease.container_id in valid_ids
        else:
            keep = (lease.container_id, lease.ifname) in valid
        if not keep:
            try:
                store.release(lease.ip)
            except CNIError as err:  # one lease that cannot be removed must not keep the others
                errors.append(err)
                continue
            released.append(lease.ip)
    if errors:
        raise errors[0]
    return released
