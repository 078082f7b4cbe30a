"""Pure unit tests (no subprocess, no disk) of the protocol layer: spec/env.py, spec/version.py,
spec/result.py (host-local's pure parts: tests/test_allocator.py; the config models:
tests/test_config_types.py)."""

from __future__ import annotations

import ipaddress
import json

import pytest

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
    # strict like the Go types a result is decoded into (issue 14): "1500" is not an int
    {"interfaces": [{"name": "a", "mtu": "1500"}]},
    {"interfaces": [{"name": "a", "mtu": 1500.0}]},
    {"routes": [{"dst": "0.0.0.0/0", "table": 2**40}]},
    {"routes": [{"dst": "0.0.0.0/0", "priority": "10"}]},
    {"ips": [{"address": "10.1.0.2/24", "interface": True}], "interfaces": [{"name": "a"}]},
    {"ip4": "10.1.0.2/24"},
    {"ip4": {"ip": "bogus"}},
])
def test_parse_garbage_is_code_6(garbage):
    assert code_of(Result.parse, garbage) == 6


def test_version_probe_with_dummy_values_is_accepted():
    """libcni's GetVersionInfo (used by podman) sends VERSION with every variable set to "dummy"."""
    from pycni.runner import run

    environ = {"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy", "CNI_IFNAME": "dummy", "CNI_PATH": "dummy",
               "CNI_CONTAINERID": "dummy"}
    status, out = run("pycni", environ, b'{"cniVersion": "1.0.0"}')
    assert status == 0, out
    assert json.loads(out)["supportedVersions"][-1] == "1.1.0"
