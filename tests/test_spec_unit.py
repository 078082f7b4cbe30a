"""Pure unit tests (no subprocess, no disk): the protocol layer (spec/env.py, spec/version.py,
spec/result.py) and the pure parts of host-local (ipam/ranges.py, ipam/allocator.py over an
in-memory store)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from pycni.ipam import allocator
from pycni.ipam.ranges import Range, RangeSet, parse_ip
from pycni.ipam.store import Lease
from pycni.spec import env as cnienv
from pycni.spec import version as versions
from pycni.spec.errors import CNIError
from pycni.spec.result import Result

ip = ipaddress.ip_address


def code_of(fn, *args, **kw) -> int:
    with pytest.raises(CNIError) as exc:
        fn(*args, **kw)
    return exc.value.code


# -- spec/env.py ---------------------------------------------------------------------------------------------

FULL_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "CNI_ARGS": "IgnoreUnknown=1"}


def test_read_environment_full():
    env = cnienv.read_environment(FULL_ENV)
    assert env == cnienv.Environment(command="ADD", container_id="c1", netns="/var/run/netns/x", ifname="eth0",
                                     args="IgnoreUnknown=1", path=("/opt/cni/bin", "/usr/lib/cni"))


def test_cni_path_drops_empty_elements():
    assert cnienv.read_environment(dict(FULL_ENV, CNI_PATH=":/a::/b:")).path == ("/a", "/b")


@pytest.mark.parametrize("command,missing", [
    ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"), ("ADD", "CNI_PATH"),
    ("CHECK", "CNI_NETNS"), ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"), ("DEL", "CNI_PATH"),
    ("STATUS", "CNI_PATH"), ("GC", "CNI_PATH"),
])
def test_required_variables(command, missing):
    env = dict(FULL_ENV, CNI_COMMAND=command)
    del env[missing]
    with pytest.raises(CNIError) as exc:
        cnienv.read_environment(env)
    assert exc.value.code == 4 and missing in exc.value.msg


@pytest.mark.parametrize("command,env", [
    ("DEL", {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}),  # DEL without netns
    ("STATUS", {"CNI_PATH": "/x"}),
    ("GC", {"CNI_PATH": "/x"}),
    ("VERSION", {}),
])
def test_verbs_that_need_less(command, env):
    assert cnienv.read_environment(dict(env, CNI_COMMAND=command)).command == command


@pytest.mark.parametrize("command", ["", "add", "Add", "FROB", "ADD "])
def test_bad_command(command):
    env = dict(FULL_ENV, CNI_COMMAND=command)
    assert code_of(cnienv.read_environment, env) == 4


@pytest.mark.parametrize("cid,valid", [
    ("c1", True), ("0abc", True), ("a.b-c_d", True), ("A" * 200, True),
    ("", False), ("-a", False), ("_a", False), (".a", False), ("..", False), ("a/b", False), ("a b", False),
    ("a\n", False), ("ä", False), ("a:b", False),
])
def test_container_id_rule(cid, valid):
    if valid:
        cnienv.validate_container_id(cid)
    else:
        assert code_of(cnienv.validate_container_id, cid) == 4


@pytest.mark.parametrize("ifname,valid", [
    ("eth0", True), ("e" * 15, True), ("net-1.2", True), ("a..", True),
    ("e" * 16, False), ("", False), (".", False), ("..", False), ("a/b", False), ("a:b", False), ("a b", False),
    ("a\tb", False), ("a\x00", False),
])
def test_ifname_rule(ifname, valid):
    if valid:
        cnienv.validate_ifname(ifname)
    else:
        assert code_of(cnienv.validate_ifname, ifname) == 4


@pytest.mark.parametrize("name,code", [("net1", None), ("a.b-c_d", None), ("", 7), (None, 7), (5, 7),
                                       ("a/b", 7), ("..", 7), ("-n", 7), ("n\n", 7)])
def test_network_name_rule(name, code):
    if code is None:
        cnienv.validate_network_name(name)
    else:
        assert code_of(cnienv.validate_network_name, name) == code


@pytest.mark.parametrize("netns,valid", [("/var/run/netns/x", True), ("/proc/1/ns/net", True),
                                         ("x", False), ("./x", False), ("/a\x00b", False)])
def test_netns_rule(netns, valid):
    if valid:
        cnienv.validate_netns(netns)
    else:
        assert code_of(cnienv.validate_netns, netns) == 4


def test_env_validation_per_verb():
    assert code_of(cnienv.read_environment, dict(FULL_ENV, CNI_CONTAINERID="a/b")) == 4
    assert code_of(cnienv.read_environment, dict(FULL_ENV, CNI_COMMAND="DEL", CNI_IFNAME="x" * 16)) == 4
    assert code_of(cnienv.read_environment, dict(FULL_ENV, CNI_NETNS="rel")) == 4
    # STATUS and GC do not look at the container variables
    env = cnienv.read_environment(dict(FULL_ENV, CNI_COMMAND="GC", CNI_CONTAINERID="a/b"))
    assert env.command == "GC"


KNOWN = frozenset({"IP", "MAC"})


@pytest.mark.parametrize("raw,expected", [
    ("", {}),
    ("IP=10.1.0.5", {"IP": "10.1.0.5"}),
    ("IP=10.1.0.5;MAC=aa:bb:cc:dd:ee:ff", {"IP": "10.1.0.5", "MAC": "aa:bb:cc:dd:ee:ff"}),
    ("IP=10.1.0.5;", {"IP": "10.1.0.5"}),
    ("IP=", {"IP": ""}),
    ("IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns;IP=10.1.0.5",
     {"IgnoreUnknown": "1", "K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": "ns", "IP": "10.1.0.5"}),
    ("IgnoreUnknown=true;FOO=bar", {"IgnoreUnknown": "true", "FOO": "bar"}),
    ("IgnoreUnknown=TRUE;FOO=bar", {"IgnoreUnknown": "TRUE", "FOO": "bar"}),
    ("IgnoreUnknown=0", {"IgnoreUnknown": "0"}),
    ("IP=1;IP=2", {"IP": "2"}),  # the last one wins
])
def test_cni_args_parse(raw, expected):
    args = cnienv.parse_cni_args(raw, KNOWN)
    assert args.values == expected
    assert args.get("IP") == expected.get("IP")


@pytest.mark.parametrize("raw", ["junk", "a=b=c", "=v", "IP=1;junk", "FOO=bar", "IgnoreUnknown=0;FOO=bar",
                                 "IgnoreUnknown=false;K8S_POD_NAME=p", "IgnoreUnknown=maybe", "IgnoreUnknown=yes;X=1",
                                 "K8S_POD_NAME=p"])
def test_cni_args_refused(raw):
    assert code_of(cnienv.parse_cni_args, raw, KNOWN) == 4


# -- spec/version.py -----------------------------------------------------------------------------------------


def test_version_parse_and_compare():
    assert versions.parse("1.10.0") == (1, 10, 0)
    assert versions.at_least("1.10.0", "1.9.0")  # numeric, not lexicographic
    assert not versions.at_least("0.4.0", "1.0.0")
    assert versions.at_least("1.1.0", "1.1.0")
    for bad in ("abc", "1.1", "1.1.0.0", "", "1.a.0", "-1.0.0", "1.0.0-rc1"):
        assert code_of(versions.parse, bad) == 1


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "9.9.9", "abc"])
def test_unsupported_versions(version):
    assert code_of(versions.require_supported, version, "ADD") == 1


@pytest.mark.parametrize("version", versions.SUPPORTED_VERSIONS)
@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_verb_minimum_versions(version, verb):
    minimum = {"ADD": "0.1.0", "DEL": "0.1.0", "CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}[verb]
    if versions.at_least(version, minimum):
        versions.require_supported(version, verb)
    else:
        assert code_of(versions.require_supported, version, verb) == 1


def test_version_info():
    assert versions.SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert versions.version_info("0.4.0") == {"cniVersion": "0.4.0", "supportedVersions": list(versions.SUPPORTED_VERSIONS)}
    assert versions.version_info("0.2.0")["cniVersion"] == "1.1.0"
    assert versions.version_info(None)["cniVersion"] == "1.1.0"


# -- spec/result.py ------------------------------------------------------------------------------------------

FULL_RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:01:00:01", "mtu": 1400},
        {"name": "eth0", "mac": "0a:58:0a:01:00:02", "sandbox": "/var/run/netns/x", "socketPath": "/s",
         "pciID": "0000:00:01.0"},
    ],
    "ips": [{"interface": 1, "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
            {"interface": 1, "address": "fd00::2/64"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "advmss": 1200, "priority": 10, "table": 100,
                "scope": 0}],
    "dns": {"nameservers": ["10.0.0.53"], "domain": "d", "search": ["s"], "options": ["ndots:2"]},
}


def test_to_dict_1_1_0_keeps_everything():
    assert Result.parse(FULL_RESULT).to_dict("1.1.0") == FULL_RESULT


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_to_dict_older_versions(version):
    out = Result.parse(FULL_RESULT).to_dict(version)
    assert out["cniVersion"] == version
    # 1.1.0 additions are dropped
    assert out["interfaces"] == [{"name": "cni0", "mac": "0a:58:0a:01:00:01"},
                                 {"name": "eth0", "mac": "0a:58:0a:01:00:02", "sandbox": "/var/run/netns/x"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    old = version < "1.0.0"
    v4 = {"interface": 1, "address": "10.1.0.2/24", "gateway": "10.1.0.1"}
    v6 = {"interface": 1, "address": "fd00::2/64"}
    if old:  # ips[].version is required before 1.0.0
        v4, v6 = {"version": "4", **v4}, {"version": "6", **v6}
    assert out["ips"] == [v4, v6]
    assert out["dns"] == FULL_RESULT["dns"]


def test_to_dict_empty_dns_only_before_1_0_0_and_omits_empty_lists():
    """libcni 1.3's types: 0.3.x/0.4.0 results always carry dns, 1.0.0+ leave an empty one out (as the
    reference plugins v1.10 print; 1.1.1 printed "dns": {} in 1.0.0 too)."""
    assert Result().to_dict("1.0.0") == {"cniVersion": "1.0.0"}
    assert Result().to_dict("1.1.0") == {"cniVersion": "1.1.0"}
    assert Result().to_dict("0.4.0") == {"cniVersion": "0.4.0", "dns": {}}
    assert Result().to_dict("0.3.1") == {"cniVersion": "0.3.1", "dns": {}}


def test_route_zero_values():
    r = Result.parse({"routes": [{"dst": "10.0.0.0/8", "table": 0, "scope": 0, "mtu": 0}]})
    assert r.to_dict("1.1.0")["routes"] == [{"dst": "10.0.0.0/8", "scope": 0}]  # scope 0 (universe) is meaningful


def test_parse_0_2_0():
    r = Result.parse({
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.0.2/24", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "fd00::2/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": {"nameservers": ["10.0.0.53"]},
    })
    assert r.to_dict("0.3.1") == {
        "cniVersion": "0.3.1",
        "ips": [{"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                {"version": "6", "address": "fd00::2/64"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
        "dns": {"nameservers": ["10.0.0.53"]},
    }


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_parse_0_3_and_0_4(version):
    data = {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": "/n"}],
            "ips": [{"version": "4", "interface": 0, "address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    r = Result.parse(data)
    assert r.ips[0].address == "10.1.0.2/24" and r.ips[0].family == 4 and r.ips[0].interface == 0
    assert r.to_dict(version) == data
    assert "version" not in r.to_dict("1.0.0")["ips"][0]


def test_parse_1_0_0_and_canonical_forms():
    r = Result.parse({"cniVersion": "1.0.0", "ips": [{"address": "FD00:0::0002/64", "gateway": "fd00:0::1"}],
                      "routes": [{"dst": "10.1.0.5/16"}], "dns": None, "interfaces": None})
    assert r.to_dict("1.0.0") == {"cniVersion": "1.0.0", "ips": [{"address": "fd00::2/64", "gateway": "fd00::1"}],
                                  "routes": [{"dst": "10.1.0.0/16"}]}


def test_parse_ignores_unknown_keys():
    r = Result.parse({"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/24", "future": 1}], "x": {}})
    assert r.to_dict("1.1.0") == {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/24"}]}


@pytest.mark.parametrize("garbage", [
    None, [], "result", 5,
    {"ips": "x"},
    {"ips": [{"address": "nope"}]},
    {"ips": [{}]},
    {"ips": [{"version": "5", "address": "10.1.0.2/24"}]},
    {"ips": [{"version": "6", "address": "10.1.0.2/24"}]},
    {"ips": [{"version": 4, "address": "10.1.0.2/24"}]},
    {"ips": [{"address": "10.1.0.2/24", "interface": 0}]},  # no interfaces[]
    {"ips": [{"address": "10.1.0.2/24", "interface": -1}], "interfaces": [{"name": "a"}]},
    {"ips": [{"address": "10.1.0.2/24", "gateway": "gw"}]},
    {"routes": [{"dst": "nowhere"}]},
    {"routes": [{"dst": "0.0.0.0/0", "scope": 300}]},
    {"interfaces": [{"mac": "aa"}]},  # no name
    {"interfaces": [{"name": "a", "mtu": -5}]},
    {"dns": {"nameservers": "10.0.0.53"}},
    {"ip4": "10.1.0.2/24"},
    {"ip4": {"ip": "bogus"}},
])
def test_parse_garbage_is_code_6(garbage):
    assert code_of(Result.parse, garbage) == 6


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


def test_version_probe_with_dummy_values_is_accepted():
    """libcni's GetVersionInfo (used by podman) sends VERSION with every variable set to "dummy"."""
    from pycni.cli import run

    environ = {"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy", "CNI_IFNAME": "dummy", "CNI_PATH": "dummy",
               "CNI_CONTAINERID": "dummy"}
    status, out = run("pycni", environ, b'{"cniVersion": "1.0.0"}')
    assert status == 0, out
    assert json.loads(out)["supportedVersions"][-1] == "1.1.0"
