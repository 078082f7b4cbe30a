"""Differential tests: pycni-host-local against the reference host-local (containernetworking/plugins),
in both releases (the `reference` fixture): Debian's v1.1.1 (/usr/lib/cni, speaks up to cniVersion
1.0.0) and the current release built into build/ref by `make build` (integration/cni/go.mod).

The same ADD/DEL sequence is run by both on two separate dataDirs; every step must give the same exit
status and the same result (parsed JSON), and afterwards the stores must hold the same files with the
same contents and modes (the lock file only has to exist: its mode differs and carries no data).
Then the two share one dataDir: leases, round-robin cursor and CHECK must be understood by both.

Known differences deliberately left out (see also the report in the commit message):
  * error objects: the reference answers most failures with code 999 and no cniVersion; pycni uses
    the spec codes (102 exhausted, 103 unavailable, 7 invalid config...). Only exit statuses of
    failures are compared;
  * the reference's DEL and CHECK create <dataDir>/<network>/ and its lock when absent; pycni's don't;
  * the reference accepts rangeStart = network address, rangeEnd = broadcast, a gateway outside the
    subnet, relative and '..' dataDirs, and an ipam without "type"; pycni refuses them (code 7);
  * a failed ADD that requested an address in no range set advances the reference's cursor; pycni
    checks requests before writing anything;
  * VERSION: the reference lists 0.1.0/0.2.0 and always answers cniVersion 1.0.0.
Where the two releases differ from each other, the test says so (GC: only the current release has
it; see test_gc_matches_the_current_reference and docs/gc.md).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Reference, exec_plugin

REF = "host-local"
OURS = "pycni-host-local"

pytestmark = pytest.mark.reference

NET = "refnet"
NETNS = "/var/run/netns/pycni-ref"


def netconf(data_dir: Path, version: str, ipam: dict, extra: dict | None = None) -> dict:
    body = {"type": "host-local", "dataDir": str(data_dir)}
    body.update(ipam)
    conf = {"cniVersion": version, "name": NET, "type": "host-local", "ipam": body}
    conf.update(extra or {})
    return conf


def call(plugin: str, command: str, data_dir: Path, version: str, ipam: dict, cid: str,
         ifname: str = "eth0", extra: dict | None = None, args: str | None = None):
    """Run OURS, or the reference host-local at the path `plugin` (Reference.exe)."""
    res = exec_plugin(plugin, command, netconf(data_dir, version, ipam, extra), container_id=cid,
                      ifname=ifname, netns=NETNS, args=args)
    assert "Traceback" not in res.stderr
    return res


def snapshot(data_dir: Path) -> dict[str, tuple[bytes, int] | None]:
    """name -> (content, mode) for every file of the network's store; the lock only by name."""
    base = data_dir / NET
    out: dict[str, tuple[bytes, int] | None] = {}
    for p in sorted(base.iterdir()):
        out[p.name] = None if p.name == "lock" else (p.read_bytes(), os.stat(p).st_mode & 0o7777)
    return out


def leased(data_dir: Path) -> dict[str, bytes]:
    return {name: v[0] for name, v in snapshot(data_dir).items() if name[0].isdigit() or ":" in name}


# A step: (command, container ID, ifname, extra top-level config keys, CNI_ARGS)
def add(cid, ifname="eth0", extra=None, args=None):
    return ("ADD", cid, ifname, extra, args)


def dele(cid, ifname="eth0"):
    return ("DEL", cid, ifname, None, None)


# c must come after b, not in a's freed place (round robin); the second DEL of a is a no-op success
STANDARD = [add("a"), add("b", "net1"), dele("a"), add("c"), dele("a")]

CONFIGS = {
    "single-24": ({"ranges": [[{"subnet": "10.1.0.0/24"}]]}, STANDARD),
    "dual-stack-routes": ({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]],
                           "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"},
                                      {"dst": "::/0", "gw": "fd00:1::1"}]}, STANDARD),
    "window": ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100", "rangeEnd": "10.1.0.102"}]]},
               [add("a"), add("b"), add("c"), add("x"), dele("b"), add("d")]),
    # .253, .254, then 10.2.0.1 is that range's gateway: .2, .3, full; a freed, e takes .253 on wrap-around
    "two-ranges-one-set": ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.253"},
                                        {"subnet": "10.2.0.0/24", "rangeEnd": "10.2.0.3"}]]},
                           [add("a"), add("b"), add("c"), add("d"), add("x"), dele("a"), add("e")]),
    "legacy-subnet": ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20", "gateway": "10.1.0.19",
                       "routes": [{"dst": "0.0.0.0/0"}]}, STANDARD),
    "gateway-254": ({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.254"}]]}, STANDARD),
    "requested-ip": ({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]},
                     [add("a", extra={"args": {"cni": {"ips": ["10.1.0.50"]}}}),
                      add("b"),
                      add("c", args="IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.0.7"),
                      add("d", extra={"runtimeConfig": {"ips": ["fd00:1::99/64"]}}),
                      dele("a"), add("e", extra={"args": {"cni": {"ips": ["10.1.0.50"]}}}),
                      add("f", extra={"args": {"cni": {"ips": ["10.1.0.7"]}}})]),  # taken: both fail
}

# 1.0.0 and 0.4.0 are the two result shapes (without / with ips[].version): every config runs in both.
# 0.3.1 prints what 0.4.0 prints but for cniVersion, so it runs a few (each pycni exec costs ~0.13 s).
MATRIX = [(config, version) for version in ("1.0.0", "0.4.0") for config in CONFIGS]
MATRIX += [(config, "0.3.1") for config in ("single-24", "dual-stack-routes", "requested-ip")]

# Sequences run once at 1.0.0 only.
WRAP = ({"ranges": [[{"subnet": "10.3.0.0/29"}]]},  # .2 .. .6
        [add(f"c{i}") for i in range(5)]
        + [add("full"), dele("c3"), add("n1"), add("full2"), dele("c0"), dele("c4"), add("n2"), add("n3")])
LEGACY = ({"ranges": [[{"subnet": "10.1.0.0/24"}]]}, [add("a"), dele("oldctr")])


def _legacy_seed(base: Path) -> None:
    (base / NET).mkdir(parents=True)
    (base / NET / "10.1.0.9").write_bytes(b"oldctr")  # ID-only leases of an old host-local
    (base / NET / "10.1.0.10").write_bytes(b"keepme")


def run_sequence(ref_exe: str, root: Path, version: str, ipam: dict, steps, seed=None) -> tuple[list, Path, Path]:
    """Run `steps` with both plugins, each on its own dataDir; return (per-step runs, ref dir, our dir)."""
    ref_dir, our_dir = root / "ref", root / "ours"
    if seed:
        seed(ref_dir)
        seed(our_dir)
    records = []
    for step in steps:
        command, cid, ifname, extra, args = step
        ref = call(ref_exe, command, ref_dir, version, ipam, cid, ifname, extra, args)
        ours = call(OURS, command, our_dir, version, ipam, cid, ifname, extra, args)
        records.append((step, ref, ours))
    return records, ref_dir, our_dir


def same_result(ref: dict, ours: dict) -> bool:
    """The releases differ: 1.1.1 prints `"dns": {}` in a 1.0.0 result, the current one leaves an empty
    dns out (libcni 1.3's types/100); pycni follows the current one, so an empty dns is ignored."""
    if ref.get("dns") == {} and ref.get("cniVersion", "").startswith("1."):
        ref = {k: v for k, v in ref.items() if k != "dns"}
    return ours == ref


def assert_same(records, ref_dir: Path, our_dir: Path) -> None:
    for (command, cid, ifname, _, _), ref, ours in records:
        where = f"{command} {cid}/{ifname}: ref={ref.stdout!r} ours={ours.stdout!r} ({ours.stderr[-300:]})"
        assert "Traceback" not in ours.stderr, where
        assert (ref.returncode == 0) == (ours.returncode == 0), where
        if ref.returncode == 0:
            if ref.stdout.strip():
                assert same_result(ref.json, ours.json), where
            else:
                assert ours.stdout.strip() == "", where
        else:
            assert ours.json["code"] >= 100, where  # the reference's 999: a plugin failure either way
    assert as_current(snapshot(our_dir)) == as_current(snapshot(ref_dir))


def as_current(snap: dict) -> dict:
    """The releases differ: 1.1.1 writes lease and cursor files 0644, the current one 0600 (pycni
    follows it: a lease names a container, nothing others need to read; test_ipam_exec pins 0600).
    Seeded files are written 0644 by the test itself, on both sides."""
    return {k: v if v is None or v[1] != 0o644 else (v[0], 0o600) for k, v in snap.items()}


@pytest.fixture(scope="module")
def sequences(tmp_path_factory, reference: Reference) -> dict:
    """Every sequence, run up front in parallel (each on its own directories): a pycni exec costs
    ~0.13 s of CPU, the sequences are independent, and this keeps the module fast."""
    jobs = {(config, version): (version, *CONFIGS[config]) for config, version in MATRIX}
    jobs[("wrap", "1.0.0")] = ("1.0.0", *WRAP)
    jobs[("legacy", "1.0.0")] = ("1.0.0", *LEGACY, _legacy_seed)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(run_sequence, reference.exe(REF), tmp_path_factory.mktemp("seq"), *job)
                   for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("config,version", MATRIX)
def test_same_sequence_same_results_and_files(sequences, config, version):
    records, ref_dir, our_dir = sequences[(config, version)]
    assert len(records) == len(CONFIGS[config][1])
    assert_same(records, ref_dir, our_dir)
    names = set(snapshot(ref_dir))
    assert "lock" in names and "last_reserved_ip.0" in names  # the comparison had something to compare
    assert any(ref.returncode == 0 and ref.stdout.strip() for _, ref, _ in records)


def test_sequences_allocate_what_we_expect(sequences):
    """Pin absolute answers, so that both plugins agreeing on something wrong is noticed."""
    _, ref_dir, our_dir = sequences[("two-ranges-one-set", "1.0.0")]
    for d in (ref_dir, our_dir):
        assert leased(d) == {"10.1.0.253": b"e\r\neth0", "10.1.0.254": b"b\r\neth0",
                             "10.2.0.2": b"c\r\neth0", "10.2.0.3": b"d\r\neth0"}
        assert snapshot(d)["last_reserved_ip.0"][0] == b"10.1.0.253"
    records, _, _ = sequences[("requested-ip", "0.4.0")]
    (_, _, ours_a), (_, _, ours_b) = records[:2]
    assert [ip["address"] for ip in ours_a.json["ips"]] == ["10.1.0.50/24", "fd00:1::2/64"]
    assert [ip["version"] for ip in ours_a.json["ips"]] == ["4", "6"]
    assert [ip["address"] for ip in ours_b.json["ips"]] == ["10.1.0.51/24", "fd00:1::3/64"]  # after the cursor
    assert records[-1][1].returncode != 0 and records[-1][2].json["code"] == 103  # requested .7 is taken


def test_wrap_around_after_exhaustion_matches(sequences):
    records, ref_dir, our_dir = sequences[("wrap", "1.0.0")]
    assert_same(records, ref_dir, our_dir)
    failed = [step[1] for step, ref, _ in records if ref.returncode != 0]
    assert failed == ["full", "full2"]
    assert [ours.json["code"] for step, _, ours in records if step[1].startswith("full")] == [102, 102]
    # n1 wraps to the freed .5; n2 takes .6 (after the cursor), n3 wraps again to .2
    assert leased(ref_dir) == {"10.3.0.2": b"n3\r\neth0", "10.3.0.3": b"c1\r\neth0", "10.3.0.4": b"c2\r\neth0",
                               "10.3.0.5": b"n1\r\neth0", "10.3.0.6": b"n2\r\neth0"}


def test_legacy_id_only_lease_released_by_both(sequences):
    records, ref_dir, our_dir = sequences[("legacy", "1.0.0")]
    assert_same(records, ref_dir, our_dir)
    assert leased(our_dir) == {"10.1.0.2": b"a\r\neth0", "10.1.0.10": b"keepme"}


# -- one shared dataDir ----------------------------------------------------------------------------------------

IPAM = {"ranges": [[{"subnet": "10.4.0.0/24"}], [{"subnet": "fd00:4::/64"}]]}


def _exe(plugin: str, reference: Reference) -> str:
    return reference.exe(REF) if plugin == REF else plugin


@pytest.mark.parametrize("writer,deleter", [(REF, OURS), (OURS, REF)])
def test_lease_of_one_released_by_the_other(tmp_path, reference, writer, deleter):
    writer, deleter = _exe(writer, reference), _exe(deleter, reference)
    res = call(writer, "ADD", tmp_path, "1.0.0", IPAM, "shared")
    assert res.returncode == 0, res.stdout
    assert {"10.4.0.2", "fd00:4::2"} <= set(snapshot(tmp_path))
    res = call(deleter, "DEL", tmp_path, "1.0.0", IPAM, "shared")
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout
    assert set(snapshot(tmp_path)) == {"lock", "last_reserved_ip.0", "last_reserved_ip.1"}


def test_alternating_adds_share_the_cursor(tmp_path, reference):
    ref = reference.exe(REF)
    ipam = {"ranges": [[{"subnet": "10.5.0.0/29"}]]}  # .2 .. .6
    seen = []
    for i in range(5):
        plugin = ref if i % 2 == 0 else OURS
        res = call(plugin, "ADD", tmp_path, "1.0.0", ipam, f"alt{i}")
        assert res.returncode == 0, (plugin, res.stdout)
        seen.append(res.json["ips"][0]["address"])
        assert snapshot(tmp_path)["last_reserved_ip.0"][0] == seen[-1].split("/")[0].encode()
    assert seen == [f"10.5.0.{n}/29" for n in range(2, 7)]  # round robin continues across plugins
    for plugin in (ref, OURS):
        assert call(plugin, "ADD", tmp_path, "1.0.0", ipam, "extra").returncode != 0  # full for both
    # free two, then each plugin takes one: after wrap-around, never the same
    assert call(OURS, "DEL", tmp_path, "1.0.0", ipam, "alt1").returncode == 0
    assert call(ref, "DEL", tmp_path, "1.0.0", ipam, "alt3").returncode == 0
    got = [call(p, "ADD", tmp_path, "1.0.0", ipam, f"new{n}").json["ips"][0]["address"]
           for n, p in enumerate((ref, OURS))]
    assert got == ["10.5.0.3/29", "10.5.0.5/29"]
    leases = leased(tmp_path)
    assert len(leases) == 5 and len(set(leases.values())) == 5  # one owner per address, none lost


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
@pytest.mark.parametrize("writer,checker", [(REF, OURS), (OURS, REF)])
def test_check_accepts_the_other_plugins_lease(tmp_path, reference, version, writer, checker):
    writer, checker = _exe(writer, reference), _exe(checker, reference)
    added = call(writer, "ADD", tmp_path, version, IPAM, "chk")
    assert added.returncode == 0, added.stdout
    res = call(checker, "CHECK", tmp_path, version, IPAM, "chk", extra={"prevResult": added.json})
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr
    # and both refuse an attachment that holds nothing
    res = call(checker, "CHECK", tmp_path, version, IPAM, "other", extra={"prevResult": added.json})
    assert res.returncode != 0
