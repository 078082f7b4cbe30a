"""Pure unit tests (no subprocess, no disk) of host-local's logic: ipam/ranges.py (ranges, range sets,
round-robin order) and ipam/allocator.py over an in-memory store (FakeStore, the allocator's Store
protocol)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from pycni.ipam import allocator
from pycni.ipam.lease import Lease
from pycni.ipam.ranges import Range, RangeSet, parse_ip
from pycni.spec.errors import CNIError

ip = ipaddress.ip_address


def code_of(fn, *args, **kw) -> int:
    with pytest.raises(CNIError) as exc:
        fn(*args, **kw)
    return exc.value.code


# -- ipam/ranges.py ------------------------------------------------------------------------------------------


def rng(subnet, start=None, end=None, gateway=None) -> Range:
    return Range.build(subnet, start, end, gateway)


def order(rset: RangeSet, last=None) -> list[str]:
    return [str(a) for a, _ in rset.candidates(ip(last) if last else None)]


def test_range_defaults():
    r = rng("10.1.0.0/24")
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")
    r6 = rng("fd00::/64")
    assert (str(r6.start), str(r6.end), str(r6.gateway)) == ("fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")
    assert str(rng("10.1.0.0/30")) == "10.1.0.1-10.1.0.2"


@pytest.mark.parametrize("args", [
    ("10.1.0.0/31",), ("10.1.0.0/32",), ("fd00::/127",), ("fd00::/128",), ("10.1.0.1/24",), ("bogus",), ("",),
    (None,), ("10.1.0.0/24", "10.1.0.0"), ("10.1.0.0/24", None, "10.1.0.255"), ("10.1.0.0/24", "10.2.0.1"),
    ("10.1.0.0/24", "10.1.0.9", "10.1.0.8"), ("10.1.0.0/24", None, None, "10.2.0.1"), ("10.1.0.0/24", "fd00::1"),
    ("10.1.0.0/24", 5),
])
def test_range_refusals(args):
    assert code_of(Range.build, *args) == 7


def test_candidates_order_from_scratch_skips_gateway():
    rs = RangeSet.build([rng("10.1.0.0/29")], "t")
    assert order(rs) == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]


def test_candidates_round_robin_and_wrap():
    rs = RangeSet.build([rng("10.1.0.0/29")], "t")
    assert order(rs, "10.1.0.4") == ["10.1.0.5", "10.1.0.6", "10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert order(rs, "10.1.0.6") == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    # a cursor outside the set: from the beginning
    assert order(rs, "192.168.0.1") == order(rs)
    assert order(rs, "10.1.0.7") == order(rs)  # broadcast is not in the range


def test_candidates_skip_a_gateway_in_the_middle():
    rs = RangeSet.build([rng("10.1.0.0/29", gateway="10.1.0.4")], "t")
    assert order(rs) == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.5", "10.1.0.6"]
    assert order(rs, "10.1.0.3") == ["10.1.0.5", "10.1.0.6", "10.1.0.1", "10.1.0.2", "10.1.0.3"]


def test_candidates_across_ranges():
    rs = RangeSet.build([rng("10.1.0.0/24", "10.1.0.253"), rng("10.2.0.0/24", None, "10.2.0.3")], "t")
    assert order(rs) == ["10.1.0.253", "10.1.0.254", "10.2.0.2", "10.2.0.3"]
    assert order(rs, "10.1.0.254") == ["10.2.0.2", "10.2.0.3", "10.1.0.253", "10.1.0.254"]
    assert order(rs, "10.2.0.3") == ["10.1.0.253", "10.1.0.254", "10.2.0.2", "10.2.0.3"]
    assert order(rs, "10.2.0.2") == ["10.2.0.3", "10.1.0.253", "10.1.0.254", "10.2.0.2"]


def test_candidates_single_address_window():
    rs = RangeSet.build([rng("10.1.0.0/24", "10.1.0.9", "10.1.0.9")], "t")
    assert order(rs) == ["10.1.0.9"]
    assert order(rs, "10.1.0.9") == ["10.1.0.9"]


def test_ipv6_top_of_range_and_of_address_space():
    rs = RangeSet.build([rng("fd00::/120", "fd00::fe")], "t")
    assert order(rs) == ["fd00::fe", "fd00::ff"]  # no broadcast in IPv6
    assert order(rs, "fd00::ff") == ["fd00::fe", "fd00::ff"]
    top = RangeSet.build([rng("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")],
                         "t")
    assert order(top) == ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    assert order(top, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")[0] == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    v4top = RangeSet.build([rng("255.255.255.0/24", "255.255.255.253")], "t")
    assert order(v4top) == ["255.255.255.253", "255.255.255.254"]


def test_candidates_cover_every_address_once():
    rs = RangeSet.build([rng("10.1.0.0/24"), rng("10.9.0.0/28")], "t")
    for last in (None, "10.1.0.100", "10.9.0.14", "10.9.0.1"):
        got = order(rs, last)
        assert len(got) == len(set(got)) == 253 + 13  # minus the two gateways


def test_rangeset_refusals():
    assert code_of(RangeSet.build, [], "t") == 7
    assert code_of(RangeSet.build, [rng("10.1.0.0/24"), rng("fd00::/64")], "t") == 7
    assert code_of(RangeSet.build, [rng("10.1.0.0/24"), rng("10.1.0.128/25")], "t") == 7
    # windows that do not overlap may share a subnet
    rs = RangeSet.build([rng("10.1.0.0/24", None, "10.1.0.9"), rng("10.1.0.0/24", "10.1.0.10")], "t")
    assert rs.range_for(ip("10.1.0.10")) is rs.ranges[1]


def test_parse_ip():
    assert parse_ip("10.1.0.5/24", "x") == ip("10.1.0.5")
    assert parse_ip(" fd00::5 ", "x") == ip("fd00::5")
    assert code_of(parse_ip, "nope", "x") == 7
    assert code_of(parse_ip, 5, "x") == 7


# -- ipam/allocator.py over an in-memory store --------------------------------------------------------------


class FakeStore:
    """The allocator's Store protocol in memory; records every write."""

    def __init__(self, leases: dict | None = None, fail_on: set | None = None) -> None:
        self.files: dict = dict(leases or {})  # ip -> (containerID, ifname) | "" (empty) | (id, None)
        self.cursor: dict[int, object] = {}
        self.writes: list = []
        self.fail_on = fail_on or set()

    def leases(self) -> list[Lease]:
        out = []
        for addr, owner in self.files.items():
            if owner == "":
                out.append(Lease(addr, None, None, empty=True))
            else:
                out.append(Lease(addr, owner[0], owner[1]))
        return out

    def held(self, family: int) -> set[int]:
        return {int(addr) for addr, owner in self.files.items() if owner != "" and addr.version == family}

    def reserve(self, addr, container_id, ifname, range_id) -> bool:
        if addr in self.fail_on:
            raise CNIError(5, f"disk full writing {addr}")
        if addr in self.files:
            return False
        self.writes.append(("reserve", addr))
        self.files[addr] = (container_id, ifname)
        self.cursor[range_id] = addr
        return True

    def release(self, addr) -> None:
        self.writes.append(("release", addr))
        self.files.pop(addr, None)

    def last_reserved(self, range_id):
        return self.cursor.get(range_id)


V4SET = RangeSet.build([rng("10.1.0.0/29")], "t")
V6SET = RangeSet.build([rng("fd00::/125")], "t")


def addrs(configs) -> list[str]:
    return [c.address for c in configs]


def test_allocate_round_robin_dual_stack():
    store = FakeStore()
    out = allocator.allocate([V4SET, V6SET], [], store, "a", "eth0")
    assert addrs(out) == ["10.1.0.2/29", "fd00::2/125"]
    assert [c.gateway for c in out] == ["10.1.0.1", "fd00::1"]
    assert addrs(allocator.allocate([V4SET, V6SET], [], store, "b", "eth0")) == ["10.1.0.3/29", "fd00::3/125"]
    allocator.release(store, "a", "eth0")
    # freed .2 is behind the cursor: c gets .4
    assert addrs(allocator.allocate([V4SET, V6SET], [], store, "c", "eth0")) == ["10.1.0.4/29", "fd00::4/125"]


def test_allocate_requested():
    store = FakeStore()
    out = allocator.allocate([V4SET, V6SET], [ip("fd00::6"), ip("10.1.0.5")], store, "a", "eth0")
    assert addrs(out) == ["10.1.0.5/29", "fd00::6/125"]
    assert store.cursor == {0: ip("10.1.0.5"), 1: ip("fd00::6")}


@pytest.mark.parametrize("requested", [["10.9.0.1"], ["10.1.0.1"], ["10.1.0.3", "10.1.0.4"], ["fd00::1"]])
def test_impossible_requests_write_nothing(requested):
    store = FakeStore({ip("10.1.0.2"): ("x", "eth0")})
    before = dict(store.files)
    assert code_of(allocator.allocate, [V4SET, V6SET], [ip(r) for r in requested], store, "a", "eth0") == 103
    assert store.writes == [] and store.files == before and store.cursor == {}


def test_requested_but_taken_rolls_back_the_other_set():
    store = FakeStore({ip("fd00::5"): ("x", "eth0")})
    assert code_of(allocator.allocate, [V4SET, V6SET], [ip("fd00::5")], store, "a", "eth0") == 103
    assert store.files == {ip("fd00::5"): ("x", "eth0")}  # the v4 lease taken on the way is released
    assert ("release", ip("10.1.0.2")) in store.writes


def test_duplicate_attachment_writes_nothing():
    store = FakeStore({ip("fd00::2"): ("a", "eth0")})
    assert code_of(allocator.allocate, [V4SET, V6SET], [], store, "a", "eth0") == 103
    assert store.writes == []
    # another interface of the same container is a different attachment
    assert addrs(allocator.allocate([V4SET, V6SET], [], store, "a", "eth1")) == ["10.1.0.2/29", "fd00::3/125"]


def test_exhaustion_releases_what_was_reserved():
    full6 = {ip(f"fd00::{n}"): (f"o{n}", "eth0") for n in range(2, 8)}
    store = FakeStore(full6)
    with pytest.raises(CNIError) as exc:
        allocator.allocate([V4SET, V6SET], [], store, "a", "eth0")
    assert exc.value.code == 102 and "fd00::1-fd00::7" in exc.value.msg
    assert store.files == full6  # nothing left reserved


def test_store_failure_rolls_back():
    store = FakeStore(fail_on={ip("fd00::2")})
    assert code_of(allocator.allocate, [V4SET, V6SET], [], store, "a", "eth0") == 5
    assert store.files == {}
    assert store.writes == [("reserve", ip("10.1.0.2")), ("release", ip("10.1.0.2"))]


def test_interrupt_rolls_back_too():
    class Boom(FakeStore):
        def reserve(self, addr, *a):
            if addr.version == 6:
                raise KeyboardInterrupt
            return super().reserve(addr, *a)

    store = Boom()
    with pytest.raises(KeyboardInterrupt):
        allocator.allocate([V4SET, V6SET], [], store, "a", "eth0")
    assert store.files == {}


def test_taken_addresses_are_skipped_and_empty_leases_reclaimed():
    store = FakeStore({ip("10.1.0.2"): ("x", "eth0"), ip("10.1.0.3"): ""})
    assert addrs(allocator.allocate([V4SET], [], store, "a", "eth0")) == ["10.1.0.3/29"]
    assert store.files[ip("10.1.0.3")] == ("a", "eth0")


def test_release_and_legacy_fallback():
    store = FakeStore({ip("10.1.0.2"): ("a", "eth0"), ip("10.1.0.3"): ("a", "eth1"), ip("10.1.0.4"): ("a", None),
                       ip("10.1.0.5"): ("b", None)})
    assert allocator.release(store, "a", "eth0") == [ip("10.1.0.2")]  # the ID-only lease is not touched
    assert allocator.release(store, "a", "eth0") == [ip("10.1.0.4")]  # ...until nothing else matches
    assert allocator.release(store, "zzz", "eth0") == []
    assert set(store.files) == {ip("10.1.0.3"), ip("10.1.0.5")}


def test_collect_garbage():
    store = FakeStore({ip("10.1.0.2"): ("a", "eth0"), ip("10.1.0.3"): ("a", "eth1"), ip("10.1.0.4"): ("old", None),
                       ip("10.1.0.5"): ("gone", None), ip("10.1.0.6"): ""})
    released = allocator.collect_garbage(store, {("a", "eth0"), ("old", "net9")})
    assert sorted(released) == [ip("10.1.0.3"), ip("10.1.0.5"), ip("10.1.0.6")]
    assert set(store.files) == {ip("10.1.0.2"), ip("10.1.0.4")}


def test_candidate_ints_walk_the_order_of_candidates():
    """The allocator walks candidate_ints; it yields the addresses of candidates, in the same order."""
    for rset, last in ((V4SET, ip("10.1.0.4")), (V4SET, None), (V6SET, ip("fd00::7")),
                       (RangeSet.build([rng("10.9.0.0/29"), rng("10.9.1.0/30")], "t2"), ip("10.9.0.6"))):
        assert [(str(a), r) for a, r in rset.candidates(last)] == \
            [(str(ipaddress.ip_address(v)), r) for v, r in rset.candidate_ints(last)]
    assert all(a.version == 6 for a, _ in V6SET.candidates(None))


def test_allocation_skips_held_leases_without_asking_the_store():
    """Held leases are skipped in integer steps (no reserve() attempted on them), round-robin from the
    cursor and wrapping around: cursor .3, .4-.6 held (.7 is the broadcast address) -> .2."""
    held = {ip(f"10.1.0.{n}"): (f"o{n}", "eth0") for n in (4, 5, 6)}
    store = FakeStore(held)
    store.cursor[0] = ip("10.1.0.3")
    tried: list = []
    real_reserve = store.reserve

    def reserve(addr, *args):
        tried.append(addr)
        return real_reserve(addr, *args)

    store.reserve = reserve  # type: ignore[method-assign]
    assert addrs(allocator.allocate([V4SET], [], store, "a", "eth0")) == ["10.1.0.2/29"]
    assert tried == [ip("10.1.0.2")]  # not one attempt on a held address
    assert {a: o for a, o in store.files.items() if a in held} == held
    assert addrs(allocator.allocate([V4SET], [], store, "b", "eth0")) == ["10.1.0.3/29"]  # the last free one
    assert tried == [ip("10.1.0.2"), ip("10.1.0.3")]
    assert code_of(allocator.allocate, [V4SET], [], store, "c", "eth0") == 102
    assert tried == [ip("10.1.0.2"), ip("10.1.0.3")]  # a full set is found full without one write attempt


def test_collect_garbage_goes_on_past_a_lease_it_cannot_remove():
    """Issue 15: one stale lease that cannot be removed is reported after every other stale lease is gone."""

    class Stuck(FakeStore):
        def release(self, addr) -> None:
            if addr == ip("10.1.0.3"):
                raise CNIError(5, "failed to remove 10.1.0.3")
            super().release(addr)

    store = Stuck({ip("10.1.0.2"): ("a", "eth0"), ip("10.1.0.3"): ("b", "eth0"), ip("10.1.0.4"): ("c", "eth0")})
    with pytest.raises(CNIError) as err:
        allocator.collect_garbage(store, set())
    assert err.value.code == 5
    assert set(store.files) == {ip("10.1.0.3")}


def test_the_allocator_does_not_import_the_disk_store():
    """allocator.py is pure logic over the `Store` protocol: the concrete store (files, locks, inotify)
    is not among its imports."""
    code = "import sys, pycni.ipam.allocator; print('pycni.ipam.store' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
