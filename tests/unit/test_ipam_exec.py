"""pycni-host-local exec'd the way a runtime does it: CNI_* in the environment, the configuration on
stdin, one subprocess per request (SPEC.md "Section 2: Execution Protocol"). No root needed: every
store lives under tmp_path.

Covers every verb (ADD, DEL, CHECK, STATUS, GC, VERSION) in every version pycni speaks, the result
shapes of those versions, the host-local options (ranges, legacy subnet, rangeStart/rangeEnd,
gateway, routes, resolvConf, requested IPs, ipRanges), the round-robin cursor, exhaustion, GC of
leases, STATUS of a broken store, the store policies (empty lease files, stray temporaries) and
parallel ADDs.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from conftest import exec_plugin

HL = "pycni-host-local"
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
NETNS = "/var/run/netns/pycni-test"  # host-local never opens the netns; it only has to be present
NET = "net1"


def netconf(data_dir: Path, version: str = "1.1.0", name: str = NET, **ipam) -> dict:
    if "ranges" not in ipam and "subnet" not in ipam:
        ipam["ranges"] = [[{"subnet": "10.1.0.0/24"}]]
    body = {"type": HL, "dataDir": str(data_dir)}
    body.update(ipam)
    return {"cniVersion": version, "name": name, "type": HL, "ipam": body}


def run(command: str, conf, **kw):
    if command in ("ADD", "CHECK") and "netns" not in kw:
        kw["netns"] = NETNS
    return exec_plugin(HL, command, conf, **kw)


def ok(res, *, empty: bool = False):
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    if empty:
        assert res.stdout.strip() == ""
        return None
    assert res.documents == 1
    return res.json


def err(res, code: int, version: str | None = None) -> dict:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    assert res.documents == 1, res.stdout
    doc = res.json
    assert doc["code"] == code, doc
    assert isinstance(doc["msg"], str) and doc["msg"]
    assert doc["cniVersion"] in VERSIONS
    if version is not None:
        assert doc["cniVersion"] == version
    return doc


def store(data_dir: Path, name: str = NET) -> dict[str, bytes]:
    """Every file of the network's store, name -> content."""
    base = data_dir / name
    if not base.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(base.iterdir())}


def leases(data_dir: Path, name: str = NET) -> dict[str, bytes]:
    return {k: v for k, v in store(data_dir, name).items() if k != "lock" and not k.startswith("last_reserved_ip.")}


def addresses(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


DUAL = {
    "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
}


def expected_dual(version: str) -> dict:
    v4 = {"address": "10.1.0.2/24", "gateway": "10.1.0.1"}
    v6 = {"address": "fd00:1::2/64", "gateway": "fd00:1::1"}
    if version < "1.0.0":  # SPEC 0.3.x/0.4.0: ips[].version is required; 1.0.0 dropped it
        v4, v6 = {"version": "4", **v4}, {"version": "6", **v6}
    out = {
        "cniVersion": version,
        "ips": [v4, v6],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
    }
    if version < "1.0.0":  # an empty dns: printed by 0.3.x/0.4.0, left out by 1.0.0+ (libcni 1.3's types)
        out["dns"] = {}
    return out


# -- every verb in every version ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_add_result_shape_per_version(tmp_path, version):
    res = ok(run("ADD", netconf(tmp_path, version, **DUAL), container_id="ctr-a"))
    assert res == expected_dual(version)
    for ip in res["ips"]:
        assert ("version" in ip) == (version < "1.0.0")
    assert leases(tmp_path) == {"10.1.0.2": b"ctr-a\r\neth0", "fd00:1::2": b"ctr-a\r\neth0"}
    files = store(tmp_path)
    assert files["last_reserved_ip.0"] == b"10.1.0.2"
    assert files["last_reserved_ip.1"] == b"fd00:1::2"
    assert "lock" in files


@pytest.mark.parametrize("version", VERSIONS)
def test_del_per_version(tmp_path, version):
    conf = netconf(tmp_path, version)
    assert addresses(ok(run("ADD", conf, container_id="a"))) == ["10.1.0.2/24"]
    ok(run("DEL", conf, container_id="a"), empty=True)
    assert leases(tmp_path) == {}
    assert store(tmp_path)["last_reserved_ip.0"] == b"10.1.0.2"  # DEL does not move the cursor
    # a repeated DEL is success; containerd's second DEL comes without a netns
    ok(run("DEL", conf, container_id="a", netns=None), empty=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_check_per_version(tmp_path, version):
    conf = netconf(tmp_path, version, **DUAL)
    if version < "0.4.0":
        err(run("CHECK", conf), 1)
        return
    added = ok(run("ADD", conf, container_id="a"))
    before = store(tmp_path)
    ok(run("CHECK", dict(conf, prevResult=added), container_id="a"), empty=True)
    # another attachment holds nothing
    err(run("CHECK", dict(conf, prevResult=added), container_id="a", ifname="eth1"), 105)
    # a prevResult address in our ranges that is not this attachment's lease
    forged = json.loads(json.dumps(added))
    forged["ips"][0]["address"] = "10.1.0.77/24"
    err(run("CHECK", dict(conf, prevResult=forged), container_id="a"), 105)
    assert store(tmp_path) == before  # CHECK changes nothing


def test_check_without_prev_result_checks_the_lease(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    ok(run("ADD", conf, container_id="a"))
    ok(run("CHECK", conf, container_id="a"), empty=True)
    err(run("CHECK", conf, container_id="b"), 105)


def test_check_without_store_fails_and_creates_nothing(tmp_path):
    data_dir = tmp_path / "none"
    err(run("CHECK", netconf(data_dir, "1.0.0")), 105)
    assert not data_dir.exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_status_per_version(tmp_path, version):
    data_dir = tmp_path / "ipam"
    conf = netconf(data_dir, version)
    if version != "1.1.0":
        err(run("STATUS", conf), 1)
        return
    ok(run("STATUS", conf, container_id=None, ifname=None), empty=True)
    assert not data_dir.exists()  # STATUS creates nothing
    ok(run("ADD", conf))
    ok(run("STATUS", conf, container_id=None, ifname=None), empty=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_gc_per_version(tmp_path, version):
    conf = netconf(tmp_path, version)
    (tmp_path / NET).mkdir()
    (tmp_path / NET / "10.1.0.2").write_bytes(b"keep\r\neth0")
    (tmp_path / NET / "10.1.0.3").write_bytes(b"drop\r\neth0")
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    if version != "1.1.0":
        err(run("GC", gc_conf, container_id=None, ifname=None), 1)
        assert set(leases(tmp_path)) == {"10.1.0.2", "10.1.0.3"}
        return
    ok(run("GC", gc_conf, container_id=None, ifname=None), empty=True)
    assert leases(tmp_path) == {"10.1.0.2": b"keep\r\neth0"}


@pytest.mark.parametrize("request_version", VERSIONS + [None, "9.9.9"])
def test_version_verb(request_version):
    stdin = b"" if request_version is None else json.dumps({"cniVersion": request_version}).encode()
    res = ok(exec_plugin(HL, "VERSION", stdin, container_id=None, ifname=None, path=None))
    assert res["supportedVersions"] == VERSIONS
    # the caller's version is echoed when spoken, else the newest
    assert res["cniVersion"] == (request_version if request_version in VERSIONS else "1.1.0")


def test_version_needs_nothing_but_the_command():
    res = exec_plugin(HL, "VERSION", b"garbage{", container_id=None, ifname=None,
                      extra_env={"CNI_PATH": ""})
    assert ok(res)["supportedVersions"] == VERSIONS


# -- host-local options ------------------------------------------------------------------------------------


def test_legacy_subnet_with_range_window_and_exhaustion(tmp_path):
    conf = netconf(tmp_path, "1.0.0", subnet="10.1.0.0/24", rangeStart="10.1.0.10", rangeEnd="10.1.0.12")
    got = [addresses(ok(run("ADD", conf, container_id=f"c{i}")))[0] for i in range(3)]
    assert got == ["10.1.0.10/24", "10.1.0.11/24", "10.1.0.12/24"]
    before = store(tmp_path)
    doc = err(run("ADD", conf, container_id="c3"), 102, "1.0.0")
    assert "10.1.0.10-10.1.0.12" in doc["msg"]  # names the exhausted range set
    assert store(tmp_path) == before


def test_legacy_subnet_is_prepended_to_ranges(tmp_path):
    # the reference puts the top-level subnet first, then ipam.ranges
    conf = netconf(tmp_path, "1.0.0", subnet="10.5.0.0/24", ranges=[[{"subnet": "fd00:5::/64"}]])
    assert addresses(ok(run("ADD", conf))) == ["10.5.0.2/24", "fd00:5::2/64"]


def test_custom_gateway_is_skipped_and_reported(tmp_path):
    conf = netconf(tmp_path, "1.0.0", ranges=[[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.254"}]])
    res = ok(run("ADD", conf, container_id="a"))
    assert res["ips"] == [{"address": "10.1.0.1/24", "gateway": "10.1.0.254"}]
    # a window whose top is the gateway: the gateway is never handed out
    conf = netconf(tmp_path / "w", "1.0.0", ranges=[[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.254",
                                                        "rangeStart": "10.1.0.253", "rangeEnd": "10.1.0.254"}]])
    assert addresses(ok(run("ADD", conf, container_id="a"))) == ["10.1.0.253/24"]
    err(run("ADD", conf, container_id="b"), 102)


def test_ipv6_top_of_range(tmp_path):
    # IPv6 has no broadcast: the last address of the subnet is allocatable
    conf = netconf(tmp_path, "1.1.0", ranges=[[{"subnet": "fd00::/120", "rangeStart": "fd00::fe"}]])
    got = [addresses(ok(run("ADD", conf, container_id=f"c{i}")))[0] for i in range(2)]
    assert got == ["fd00::fe/120", "fd00::ff/120"]
    err(run("ADD", conf, container_id="c2"), 102)


def test_routes_and_resolv_conf(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# generated\n"
        "nameserver 10.0.0.53\n"
        "nameserver fd00::53  # trailing comment\n"
        "domain example.test\n"
        "search a.example.test b.example.test\n"
        "options ndots:2 edns0\n"
        "bogus\n"
    )
    conf = netconf(tmp_path / "ipam", "1.0.0", resolvConf=str(resolv),
                   routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}])
    res = ok(run("ADD", conf))
    assert res["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}]
    assert res["dns"] == {
        "nameservers": ["10.0.0.53", "fd00::53"],
        "domain": "example.test",
        "search": ["a.example.test", "b.example.test"],
        "options": ["ndots:2", "edns0"],
    }


def test_missing_resolv_conf_is_an_io_error_and_allocates_nothing(tmp_path):
    conf = netconf(tmp_path, "1.0.0", resolvConf=str(tmp_path / "nope"))
    err(run("ADD", conf), 5)
    assert leases(tmp_path) == {}


@pytest.mark.parametrize("source", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_ip(tmp_path, source):
    conf = netconf(tmp_path, "1.0.0", **DUAL)
    kw = {}
    if source == "runtimeConfig":
        conf["runtimeConfig"] = {"ips": ["10.1.0.42/24", "fd00:1::42"]}
    elif source == "args":
        conf["args"] = {"cni": {"ips": ["10.1.0.42", "fd00:1::42/64"]}}
    else:
        kw["args"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;IP=10.1.0.42,fd00:1::42"
    res = ok(run("ADD", conf, container_id="want", **kw))
    assert addresses(res) == ["10.1.0.42/24", "fd00:1::42/64"]
    assert leases(tmp_path) == {"10.1.0.42": b"want\r\neth0", "fd00:1::42": b"want\r\neth0"}
    assert store(tmp_path)["last_reserved_ip.0"] == b"10.1.0.42"
    # the same address for another attachment is refused, and the store is left as it was
    before = store(tmp_path)
    err(run("ADD", conf, container_id="other", **kw), 103)
    assert store(tmp_path) == before


def test_requested_ip_refusals_leave_no_trace(tmp_path):
    conf = netconf(tmp_path, "1.0.0", **DUAL)
    ok(run("ADD", conf, container_id="a"))
    before = store(tmp_path)
    for requested in (["10.1.0.1"], ["10.9.9.9"], ["10.1.0.7", "10.1.0.8"], ["fd00:1::1"]):
        # gateway / in no range / two in one set / the v6 gateway
        err(run("ADD", dict(conf, runtimeConfig={"ips": requested}), container_id="b"), 103)
        assert store(tmp_path) == before, requested


def test_duplicate_attachment_is_refused(tmp_path):
    conf = netconf(tmp_path, "1.0.0", **DUAL)
    ok(run("ADD", conf, container_id="a"))
    before = store(tmp_path)
    doc = err(run("ADD", conf, container_id="a"), 103)
    assert "duplicate" in doc["msg"]
    assert store(tmp_path) == before
    # the same container on another interface is a different attachment
    assert addresses(ok(run("ADD", conf, container_id="a", ifname="net1"))) == ["10.1.0.3/24", "fd00:1::3/64"]


def test_runtime_ip_ranges_replace_configured_ranges(tmp_path):
    conf = netconf(tmp_path, "1.1.0", **DUAL)
    conf["runtimeConfig"] = {"ipRanges": [[{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.100"}]]}
    res = ok(run("ADD", conf))
    assert res["ips"] == [{"address": "10.77.0.100/24", "gateway": "10.77.0.1"}]
    assert set(leases(tmp_path)) == {"10.77.0.100"}


# -- round robin, exhaustion, DEL ----------------------------------------------------------------------------


def test_round_robin_cursor(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    assert addresses(ok(run("ADD", conf, container_id="a"))) == ["10.1.0.2/24"]
    assert addresses(ok(run("ADD", conf, container_id="b"))) == ["10.1.0.3/24"]
    ok(run("DEL", conf, container_id="a"), empty=True)
    # a freed address is not reused while others are free: allocation continues after the cursor
    assert addresses(ok(run("ADD", conf, container_id="c"))) == ["10.1.0.4/24"]
    assert store(tmp_path)["last_reserved_ip.0"] == b"10.1.0.4"
    # at the top of the range the cursor wraps to the bottom (.254 is the last: .255 is broadcast)
    (tmp_path / NET / "last_reserved_ip.0").write_bytes(b"10.1.0.254")
    assert addresses(ok(run("ADD", conf, container_id="d"))) == ["10.1.0.2/24"]
    # a cursor outside the range set is ignored (allocation starts at the bottom again)
    (tmp_path / NET / "last_reserved_ip.0").write_bytes(b"192.168.1.1")
    assert addresses(ok(run("ADD", conf, container_id="e"))) == ["10.1.0.5/24"]


def test_exhaustion_and_wrap_around(tmp_path):
    conf = netconf(tmp_path, "1.0.0", ranges=[[{"subnet": "10.3.0.0/29"}]])
    got = [addresses(ok(run("ADD", conf, container_id=f"c{i}")))[0] for i in range(5)]
    assert got == [f"10.3.0.{n}/29" for n in range(2, 7)]  # .1 gateway, .7 broadcast
    before = store(tmp_path)
    doc = err(run("ADD", conf, container_id="c5"), 102, "1.0.0")
    assert "10.3.0.1-10.3.0.6" in doc["msg"]
    assert store(tmp_path) == before
    ok(run("DEL", conf, container_id="c2"), empty=True)  # frees .4
    assert addresses(ok(run("ADD", conf, container_id="c6"))) == ["10.3.0.4/29"]
    assert store(tmp_path)["last_reserved_ip.0"] == b"10.3.0.4"


def test_exhaustion_of_second_set_releases_the_first(tmp_path):
    conf = netconf(tmp_path, "1.0.0", ranges=[[{"subnet": "10.1.0.0/24"}],
                                              [{"subnet": "fd00::/120", "rangeStart": "fd00::ff"}]])
    ok(run("ADD", conf, container_id="a"))
    err(run("ADD", conf, container_id="b"), 102)
    assert leases(tmp_path) == {"10.1.0.2": b"a\r\neth0", "fd00::ff": b"a\r\neth0"}


def test_del_without_store_creates_nothing(tmp_path):
    data_dir = tmp_path / "ipam"
    conf = netconf(data_dir, "1.0.0")
    ok(run("DEL", conf), empty=True)
    ok(run("DEL", conf, netns=None), empty=True)
    assert not data_dir.exists()


def test_del_of_unknown_attachment_changes_nothing(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    ok(run("ADD", conf, container_id="a"))
    before = store(tmp_path)
    ok(run("DEL", conf, container_id="b"), empty=True)
    ok(run("DEL", conf, container_id="a", ifname="eth1"), empty=True)
    assert store(tmp_path) == before


def test_del_releases_legacy_id_only_lease(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    ok(run("ADD", conf, container_id="new"))
    (tmp_path / NET / "10.1.0.50").write_bytes(b"old")  # written by an old host-local
    ok(run("DEL", conf, container_id="old"), empty=True)
    assert set(leases(tmp_path)) == {"10.1.0.2"}


# -- GC ------------------------------------------------------------------------------------------------------


def _gc_store(tmp_path) -> dict:
    """A store as ADDs of (c1, eth0), (c1, eth1), (c2, eth0), (c3, net1) leave it (written directly to keep
    the test fast; test_add_result_shape_per_version pins this format), plus two legacy ID-only leases."""
    conf = netconf(tmp_path, "1.1.0")
    base = tmp_path / NET
    base.mkdir()
    for n, (cid, ifname) in enumerate((("c1", "eth0"), ("c1", "eth1"), ("c2", "eth0"), ("c3", "net1")), start=2):
        (base / f"10.1.0.{n}").write_bytes(f"{cid}\r\n{ifname}".encode())
    (base / "last_reserved_ip.0").write_bytes(b"10.1.0.5")
    (base / "lock").write_bytes(b"")
    (base / "10.1.0.100").write_bytes(b"oldkeep")  # legacy ID-only leases
    (base / "10.1.0.101").write_bytes(b"oldgone")
    return conf


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_keeps_listed_and_releases_others(tmp_path, key):
    conf = _gc_store(tmp_path)
    before = store(tmp_path)
    assert set(leases(tmp_path)) == {"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.100", "10.1.0.101"}
    valid = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "net1"},
             {"containerID": "oldkeep", "ifname": "eth0"}, {"containerID": "gone", "ifname": "eth0"}]
    ok(run("GC", dict(conf, **{key: valid}), container_id=None, ifname=None), empty=True)
    assert leases(tmp_path) == {"10.1.0.2": b"c1\r\neth0", "10.1.0.5": b"c3\r\nnet1", "10.1.0.100": b"oldkeep"}
    after = store(tmp_path)
    assert after["lock"] == before["lock"]
    assert after["last_reserved_ip.0"] == before["last_reserved_ip.0"] == b"10.1.0.5"


def test_gc_with_both_keys_disagreeing_is_refused(tmp_path):
    """docs/gc.md: libcni sends one list under both keys; two different lists are refused (7) untouched."""
    conf = _gc_store(tmp_path)
    before = store(tmp_path)
    conf["cni.dev/valid-attachments"] = [{"containerID": "c2", "ifname": "eth0"}]
    conf["cni.dev/attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
    err(run("GC", conf, container_id=None, ifname=None), 7, "1.1.0")
    assert store(tmp_path) == before


def test_gc_with_empty_list_releases_everything(tmp_path):
    conf = _gc_store(tmp_path)
    ok(run("GC", dict(conf, **{"cni.dev/valid-attachments": []}), container_id=None, ifname=None), empty=True)
    assert leases(tmp_path) == {}
    assert {"lock", "last_reserved_ip.0"} <= set(store(tmp_path))


def test_gc_without_list_releases_everything(tmp_path):
    """docs/gc.md: libcni sends no list after DELing every cached attachment (cnitool gc): none is valid."""
    conf = _gc_store(tmp_path)
    ok(run("GC", conf, container_id=None, ifname=None), empty=True)
    assert leases(tmp_path) == {}
    assert {"lock", "last_reserved_ip.0"} <= set(store(tmp_path))


def test_gc_without_store_creates_nothing(tmp_path):
    data_dir = tmp_path / "ipam"
    conf = netconf(data_dir, "1.1.0")
    conf["cni.dev/valid-attachments"] = []
    ok(run("GC", conf, container_id=None, ifname=None), empty=True)
    assert not data_dir.exists()


# -- STATUS --------------------------------------------------------------------------------------------------


def test_status_data_dir_is_a_regular_file(tmp_path):
    data_dir = tmp_path / "file"
    data_dir.write_text("not a directory")
    err(run("STATUS", netconf(data_dir), container_id=None, ifname=None), 50, "1.1.0")
    assert data_dir.read_text() == "not a directory"


def test_status_data_dir_below_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    err(run("STATUS", netconf(tmp_path / "file" / "ipam"), container_id=None, ifname=None), 50)


def test_status_network_dir_is_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = tmp_path / "ipam"
    data_dir.mkdir()
    (data_dir / NET).symlink_to(elsewhere)
    conf = netconf(data_dir)
    err(run("STATUS", conf, container_id=None, ifname=None), 50, "1.1.0")
    # and ADD refuses to write through it (I/O failure), leaving the target empty
    err(run("ADD", conf), 5)
    assert list(elsewhere.iterdir()) == []


def test_status_of_a_healthy_store(tmp_path):
    conf = netconf(tmp_path)
    ok(run("ADD", conf))
    before = store(tmp_path)
    ok(run("STATUS", conf, container_id=None, ifname=None), empty=True)
    assert store(tmp_path) == before


# -- store policies ------------------------------------------------------------------------------------------


def test_empty_lease_file_is_reclaimed_by_next_add(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    (tmp_path / NET).mkdir()
    (tmp_path / NET / "10.1.0.2").write_bytes(b"")  # a writer died between create and write
    res = ok(run("ADD", conf, container_id="a"))
    assert addresses(res) == ["10.1.0.2/24"]
    assert leases(tmp_path) == {"10.1.0.2": b"a\r\neth0"}


def test_empty_lease_file_is_not_touched_by_del(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    ok(run("ADD", conf, container_id="a"))
    (tmp_path / NET / "10.1.0.9").write_bytes(b"")
    ok(run("DEL", conf, container_id="a"), empty=True)
    assert leases(tmp_path) == {"10.1.0.9": b""}


@pytest.mark.parametrize("verb", ["ADD", "DEL"])
def test_stray_temporaries_are_swept(tmp_path, verb):
    conf = netconf(tmp_path, "1.0.0")
    ok(run("ADD", conf, container_id="a"))
    for name in (".pycni-tmp-12345-10.1.0.7", ".pycni-tmp-999-last_reserved_ip.0"):
        (tmp_path / NET / name).write_bytes(b"half")
    if verb == "ADD":
        ok(run("ADD", conf, container_id="b"))
        expected = {"10.1.0.2", "10.1.0.3"}
    else:
        ok(run("DEL", conf, container_id="a"), empty=True)
        expected = set()
    files = store(tmp_path)
    assert not [n for n in files if n.startswith(".pycni-tmp-")]
    assert set(leases(tmp_path)) == expected


def test_only_regular_temporaries_are_swept(tmp_path):
    """Every writer creates its temporary as a regular file: a symlink, FIFO or directory with our prefix
    is somebody else's and survives the sweep (found by tests/support/fuzz.py store)."""
    conf = netconf(tmp_path, "1.0.0")
    ok(run("ADD", conf, container_id="a"))
    netdir = tmp_path / NET
    (netdir / ".pycni-tmp-link").symlink_to("x")
    os.mkfifo(netdir / ".pycni-tmp-fifo")
    (netdir / ".pycni-tmp-dir").mkdir()
    ok(run("ADD", conf, container_id="b"))
    names = {p.name for p in netdir.iterdir()}
    assert {n for n in names if n.startswith(".pycni-tmp-")} == {".pycni-tmp-link", ".pycni-tmp-fifo", ".pycni-tmp-dir"}
    assert {"10.1.0.2", "10.1.0.3"} <= names and "10.1.0.4" not in names


def test_lease_files_are_not_world_writable(tmp_path):
    ok(run("ADD", netconf(tmp_path, "1.0.0")))
    for name in ("10.1.0.2", "last_reserved_ip.0"):
        assert os.stat(tmp_path / NET / name).st_mode & 0o777 == 0o600  # what the current reference writes (1.1.1: 0644)


def test_networks_do_not_share_a_store(tmp_path):
    ok(run("ADD", netconf(tmp_path, "1.0.0", name="neta")))
    ok(run("ADD", netconf(tmp_path, "1.0.0", name="netb")))
    assert leases(tmp_path, "neta") == leases(tmp_path, "netb") == {"10.1.0.2": b"ctr1\r\neth0"}


# -- concurrency ---------------------------------------------------------------------------------------------


def test_parallel_adds_get_distinct_addresses(tmp_path):
    conf = netconf(tmp_path, "1.0.0")
    n = 30
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        results[i] = run("ADD", conf, container_id=f"par{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = []
    for i in range(n):
        got.extend(addresses(ok(results[i])))
    assert len(got) == n and len(set(got)) == n
    assert set(got) == {f"10.1.0.{k}/24" for k in range(2, 2 + n)}  # nothing skipped, nothing doubled
    files = leases(tmp_path)
    assert len(files) == n
    assert {v for v in files.values()} == {f"par{i}\r\neth0".encode() for i in range(n)}
    assert not [name for name in store(tmp_path) if name.startswith(".pycni-tmp-")]
