"""Bridge plugin logic that needs neither root nor netlink: config, planning, naming, firewall scripts,
IPAM delegation through a fake plugin."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from pycni.bridge import ipam_delegate, masquerade, verbs
from pycni.bridge.config import BridgeConf
from pycni.spec.config import load
from pycni.spec.env import Environment, parse_cni_args
from pycni.spec.errors import CNIError
from pycni.spec.request import Request
from pycni.spec.result import Result


def conf(**keys) -> BridgeConf:
    data = {"cniVersion": "1.0.0", "name": "net", "type": "pycni"}
    data.update(keys)
    return load(BridgeConf, data)


# -- config ----------------------------------------------------------------------------------------


def test_reference_defaults():
    c = conf()
    assert c.bridge == "cni0" and c.preserveDefaultVlan is True
    assert not c.isGateway and not c.ipMasq and c.mtu == 0 and c.ipMasqBackend is None


def test_default_gateway_implies_gateway():
    assert conf(isDefaultGateway=True).isGateway is True


@pytest.mark.parametrize("keys, field", [
    ({"bridge": "x" * 16}, "bridge"),
    ({"bridge": "a/b"}, "bridge"),
    ({"bridge": ""}, "bridge"),
    ({"vlan": -1}, "vlan"),
    ({"vlan": 4095}, "vlan"),
    ({"mtu": 67}, "mtu"),
    ({"mtu": 70000}, "mtu"),
    ({"ipMasqBackend": "pf"}, "ipMasqBackend"),
    ({"vlanTrunk": [{"minID": 5}]}, "vlanTrunk"),
    ({"vlanTrunk": [{"minID": 9, "maxID": 5}]}, "vlanTrunk"),
    ({"vlanTrunk": [{"id": 0}]}, "vlanTrunk"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpin"),
    ({"vlan": 3, "vlanTrunk": [{"id": 4}]}, "vlanTrunk"),
    ({"disableContainerInterface": True, "ipam": {"type": "host-local"}}, "disableContainerInterface"),
    ({"bridge": "abcdefghijklm", "vlan": 100, "isGateway": True}, "bridge"),
])
def test_invalid_config_is_code_7_naming_the_field(keys, field):
    with pytest.raises(CNIError) as err:
        conf(**keys)
    assert err.value.code == 7
    assert field in err.value.details or field in err.value.msg


def test_trunk_ids():
    c = conf(vlanTrunk=[{"id": 7}, {"minID": 10, "maxID": 12}, {"id": 11}])
    assert c.trunk_vlans() == [7, 10, 11, 12] and c.vlan_filtering


def test_mac_priority_and_validation():
    c = conf(runtimeConfig={"mac": "02-00-00-00-00-0A"}, args={"cni": {"mac": "02:00:00:00:00:0b"}})
    assert c.container_mac("02:00:00:00:00:0c") == "02:00:00:00:00:0a"
    assert conf(args={"cni": {"mac": "02:00:00:00:00:0b"}}).container_mac("02:00:00:00:00:0c") == "02:00:00:00:00:0b"
    assert conf().container_mac("02:00:00:00:00:0c") == "02:00:00:00:00:0c"
    assert conf().container_mac(None) == ""
    for bad in ("01:00:00:00:00:01", "00:00:00:00:00:00", "zz:00:00:00:00:01", "02:00:00:00:00"):
        with pytest.raises(CNIError) as err:
            conf(runtimeConfig={"mac": bad}).container_mac(None)
        assert err.value.code == 7 and "runtimeConfig.mac" in err.value.msg


# -- planning --------------------------------------------------------------------------------------


def test_plan_gateways_reference_semantics():
    result = Result.parse({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}, {"address": "fd00::5/64"}],
                           "routes": [{"dst": "::/0", "gw": "fd00::fe"}]})
    gws = verbs.plan_gateways(result, conf(isDefaultGateway=True), container_index=2)
    assert [str(g) for g in gws] == ["10.1.0.1/24", "fd00::1/64"]
    assert [ip.interface for ip in result.ips] == [2, 2]
    assert [ip.gateway for ip in result.ips] == ["10.1.0.1", "fd00::1"]
    assert [(r.dst, r.gw) for r in result.routes] == [("::/0", "fd00::fe"), ("0.0.0.0/0", "10.1.0.1")]


def test_plan_gateways_keeps_ipam_gateway_and_no_gateway_mode():
    result = Result.parse({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.254"}]})
    assert [str(g) for g in verbs.plan_gateways(result, conf(isGateway=True), 2)] == ["10.1.0.254/24"]
    result = Result.parse({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]})
    assert verbs.plan_gateways(result, conf(), 2) == [] and result.ips[0].gateway is None


def test_container_routes_use_family_gateway():
    result = Result.parse({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
                           "routes": [{"dst": "10.2.0.0/16"}, {"dst": "10.3.0.0/16", "gw": "10.1.0.9"},
                                      {"dst": "fd01::/64"}]})
    routes = verbs.container_routes(result)
    assert [(r["dst"], r["gw"]) for r in routes] == [("10.2.0.0/16", "10.1.0.1"), ("10.3.0.0/16", "10.1.0.9"),
                                                     ("fd01::/64", None)]


def test_chain_appends_after_prev_result():
    c = conf(prevResult={"cniVersion": "1.0.0", "interfaces": [{"name": "a"}], "ips": [{"address": "1.2.3.4/32"}],
                         "dns": {"nameservers": ["9.9.9.9"]}})
    ours = Result.parse({"cniVersion": "1.0.0", "interfaces": [{"name": "cni0"}, {"name": "v"}, {"name": "eth0"}],
                         "ips": [{"address": "10.1.0.5/24", "interface": 2}]})
    merged = verbs._chain(c, ours)
    assert [i.name for i in merged.interfaces] == ["a", "cni0", "v", "eth0"]
    assert [ip.interface for ip in merged.ips] == [None, 3]
    assert merged.dns.nameservers == ["9.9.9.9"]
    assert verbs._chain(conf(), ours) is ours


def test_names_are_deterministic_and_short():
    # Golden value: the host veth's name is a pure function of (containerID, ifname) that must not change
    # between processes or releases (DEL after an upgrade finds the veth by this name).
    assert verbs.host_veth_name("abc", "eth0") == "veth538f587a"
    assert verbs.host_veth_name("abc", "eth0") != verbs.host_veth_name("abc", "eth1")
    assert len(verbs.host_veth_name("x" * 200, "eth0")) == 12
    att = masquerade.Attachment("net", "ctr" * 50, 'we"ird')
    assert len(att.tag) <= 127 and '"' not in att.tag
    assert masquerade.key_of(att.tag) == att.key
    assert len(verbs.veth_alias(att)) <= 255 and verbs.veth_alias(att).startswith(verbs.alias_prefix("net") + att.key)


# -- kernel errors ---------------------------------------------------------------------------------


def _raised_in_kernel(exc: BaseException) -> BaseException:
    from pycni.bridge import netlink

    try:
        with netlink.kernel("do a thing"):
            raise exc
    except BaseException as got:  # noqa: BLE001 - what the context manager lets out is the subject
        return got
    raise AssertionError("kernel() swallowed the exception")


def test_kernel_failures_are_code_101_naming_the_operation():
    from pyroute2.netlink.exceptions import NetlinkError

    for exc in (NetlinkError(errno.EEXIST, "File exists"), OSError(errno.EPERM, "Operation not permitted")):
        got = _raised_in_kernel(exc)
        assert isinstance(got, CNIError) and got.code == 101, got
        assert got.msg == "failed to do a thing" and got.details == os.strerror(exc.args[0]), got


@pytest.mark.parametrize("bug", [ValueError("bad value"), TypeError("bad type"), KeyError("attr")])
def test_kernel_leaves_bugs_to_the_generic_handler(bug):
    """A ValueError/TypeError is a bug (ours or pyroute2's), not a kernel failure: it must reach cli's
    generic handler (code 100, traceback logged) instead of passing for code 101."""
    assert _raised_in_kernel(bug) is bug


# -- nftables scripts ------------------------------------------------------------------------------


def test_nft_render():
    assert masquerade._nft_render("10.0.0.2") == "10.0.0.2"
    assert masquerade._nft_render({"concat": ["10.0.0.2", {"prefix": {"addr": "10.0.0.0", "len": 24}}]}) == \
        "10.0.0.2 . 10.0.0.0/24"


def _objects(nid: str, elements: dict[str, list[str]]) -> list[dict]:
    objs: list[dict] = [{"table": {"family": "inet", "name": "pycni"}},
                        {"chain": {"family": "inet", "table": "pycni", "name": f"masq_{nid}"}}]
    for name, keys in elements.items():
        objs.append({"set": {"family": "inet", "table": "pycni", "name": f"{name}_{nid}",
                             "elem": [{"elem": {"val": k, "comment": f"{nid}:k{i}"}} for i, k in enumerate(keys)]}})
    return objs


def test_prune_keeps_network_with_other_pods():
    objs = _objects("n1", {"a4": ["10.0.0.2", "10.0.0.3"], "a6": []})
    script = masquerade._prune("inet", "pycni", objs, [("a4_n1", "10.0.0.2")], {"n1"})
    assert script == "delete element inet pycni a4_n1 { 10.0.0.2 }\n"


def test_prune_drops_empty_network_and_table():
    objs = _objects("n1", {"a4": ["10.0.0.2"], "a6": []})
    assert masquerade._prune("inet", "pycni", objs, [("a4_n1", "10.0.0.2")], {"n1"}) == "delete table inet pycni\n"
    objs += _objects("n2", {"a4": ["10.1.0.2"]})[1:]
    script = masquerade._prune("inet", "pycni", objs, [("a4_n1", "10.0.0.2")], {"n1"})
    assert "delete chain inet pycni masq_n1" in script and "delete set inet pycni a6_n1" in script
    assert "n2" not in script and "delete table" not in script


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(masquerade.shutil, "which", lambda name: None)
    with pytest.raises(CNIError) as err:
        masquerade.pick(None)
    assert err.value.code == 101
    with pytest.raises(CNIError):
        masquerade.pick("nftables")
    monkeypatch.setattr(masquerade.shutil, "which", lambda name: "/x/" + name)
    assert masquerade.pick(None).name == "nftables"
    assert masquerade.pick("iptables").name == "iptables"


# -- IPAM delegation -------------------------------------------------------------------------------


def _fake_plugin(tmp_path, body: str) -> str:
    path = tmp_path / "fake-ipam"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def _request(tmp_path, command="ADD", ipam_type="fake-ipam") -> Request:
    raw = {"cniVersion": "1.0.0", "name": "net", "type": "pycni", "ipam": {"type": ipam_type}}
    env = Environment(command=command, container_id="c1", netns="/var/run/netns/x", ifname="eth0",
                      path=(str(tmp_path),))
    return Request(env=env, conf=load(BridgeConf, raw), raw=raw, stdin=json.dumps(raw).encode(), version="1.0.0",
                   cni_args=parse_cni_args("", verbs.KNOWN_ARGS))


def test_delegate_exec_passes_env_and_stdin(tmp_path):
    _fake_plugin(tmp_path, 'cat > "$(dirname "$0")/stdin"; env > "$(dirname "$0")/env"\n'
                 'echo \'{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24"}]}\'\n')
    req = _request(tmp_path)
    result = ipam_delegate.add(req)
    assert result.ips[0].address == "10.1.0.2/24"
    assert (tmp_path / "stdin").read_bytes() == req.stdin
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "c1" and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_NETNS"] == "/var/run/netns/x" and env["CNI_PATH"] == str(tmp_path)


def test_delegate_error_is_passed_through(tmp_path):
    _fake_plugin(tmp_path, 'echo \'{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"later"}\'; exit 1\n')
    with pytest.raises(CNIError) as err:
        ipam_delegate.add(_request(tmp_path))
    assert (err.value.code, err.value.msg, err.value.details) == (11, "busy", "later")


def test_in_process_host_local_is_parsed_once_per_add(tmp_path, monkeypatch):
    """ADD validates pycni-host-local's configuration before touching the node (precheck) and the
    allocation and its rollback reuse that parse: one load of host-local's model, one settings()."""
    from pycni.ipam import verbs as host_local
    from pycni.spec import config as spec_config

    raw = {"cniVersion": "1.1.0", "name": "net", "type": "pycni",
           "ipam": {"type": "pycni-host-local", "dataDir": str(tmp_path / "ipam"),
                    "ranges": [[{"subnet": "10.77.0.0/24"}]]}}
    env = Environment(command="ADD", container_id="c1", netns="/var/run/netns/x", ifname="eth0",
                      path=(str(tmp_path),))
    req = Request(env=env, conf=load(BridgeConf, raw), raw=raw, stdin=json.dumps(raw).encode(), version="1.1.0",
                  cni_args=parse_cni_args("", verbs.KNOWN_ARGS))
    calls = {"load": 0, "settings": 0}
    real_load, real_settings = spec_config.load, host_local.settings

    def counting_load(model, data):
        calls["load"] += model is host_local.Config
        return real_load(model, data)

    def counting_settings(r):
        calls["settings"] += 1
        return real_settings(r)

    monkeypatch.setattr(spec_config, "load", counting_load)
    monkeypatch.setattr(host_local, "settings", counting_settings)
    local = ipam_delegate.precheck(req)
    assert local is not None
    result = ipam_delegate.add(req, local)
    assert [ip.address for ip in result.ips] == ["10.77.0.2/24"]
    ipam_delegate.delete(verbs._as_verb(req, "DEL"), local)  # the rollback
    assert calls == {"load": 1, "settings": 1}
    assert not [p for p in (tmp_path / "ipam" / "net").iterdir() if p.name.startswith("10.")]
    # without the prepared request (DEL, CHECK... of their own) it is parsed for that call
    assert ipam_delegate.precheck(_request(tmp_path)) is None  # an exec'd IPAM validates itself


def test_delegate_failures_are_code_104(tmp_path):
    _fake_plugin(tmp_path, "echo oops >&2; exit 3\n")
    with pytest.raises(CNIError) as err:
        ipam_delegate.delete(_request(tmp_path, "DEL"))
    assert err.value.code == 104 and "oops" in err.value.details
    _fake_plugin(tmp_path, "echo not-json\n")
    with pytest.raises(CNIError) as err:
        ipam_delegate.add(_request(tmp_path))
    assert err.value.code == 104
    with pytest.raises(CNIError) as err:
        ipam_delegate.add(_request(tmp_path, ipam_type="missing-plugin"))
    assert err.value.code == 104 and "missing-plugin" in err.value.msg
    with pytest.raises(CNIError) as err:
        ipam_delegate.add(_request(tmp_path, ipam_type="../bin/sh"))
    assert err.value.code == 7


def test_rollback_runs_in_reverse_and_survives_failures():
    done = []
    undo = verbs.Rollback()
    undo.push("a", lambda: done.append("a"))
    undo.push("b", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    undo.push("c", lambda: done.append("c"))
    undo.run()
    assert done == ["c", "a"] and undo.steps == []


def test_status_and_del_do_not_import_pyroute2(tmp_path):
    """STATUS and a DEL whose host veth is gone must not pay for pyroute2 (~200 ms).
    As root this runs inside a namespace of its own (network safety); unprivileged it cannot
    change anything anyway."""
    import subprocess
    import sys

    from conftest import IS_ROOT, Namespaces

    code = (
        "import sys, json\n"
        "from pycni import runner\n"
        "raw = {'cniVersion': '1.1.0', 'name': 'net', 'type': 'pycni'}\n"
        "env = {'CNI_COMMAND': 'DEL', 'CNI_CONTAINERID': 'gone', 'CNI_IFNAME': 'eth0', 'CNI_PATH': '/nonexistent'}\n"
        "rc, out = runner.run('pycni', env, json.dumps(raw).encode())\n"
        "env = {'CNI_COMMAND': 'STATUS', 'CNI_PATH': '/nonexistent'}\n"
        "rc2, out2 = runner.run('pycni', env, json.dumps(raw).encode())\n"
        "print(json.dumps([rc, out, rc2, out2, 'pyroute2' in sys.modules]))\n"
    )
    namespaces = Namespaces()
    argv = [sys.executable, "-c", code]
    try:
        if IS_ROOT:
            argv = ["nsenter", f"--net={Namespaces.path(namespaces.create('pycnit-node'))}", "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(os.environ))
    finally:
        namespaces.cleanup()
    rc, text, rc2, text2, imported = json.loads(out.stdout)
    assert rc == 0 and text == ""
    assert rc2 == 0 or json.loads(text2)["code"] == 50  # unprivileged: not ready, but it answered
    assert imported is False


# -- conf/ examples --------------------------------------------------------------------------------

CONF_DIR = os.path.join(os.path.dirname(__file__), "..", "conf")
EXAMPLES = sorted(f for f in os.listdir(CONF_DIR) if f.endswith(".conflist"))


def test_examples_exist():
    assert {"single-stack.conflist", "dual-stack.conflist", "portmap.conflist", "kind.conflist"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_conflists_validate(name):
    from pycni.spec.env import validate_network_name
    from pycni.spec.version import require_supported

    with open(os.path.join(CONF_DIR, name)) as fh:
        data = json.load(fh)
    validate_network_name(data["name"])
    require_supported(data["cniVersion"], "ADD")
    ours = [p for p in data["plugins"] if p["type"] == "pycni"]
    assert len(ours) == 1 and data["plugins"][0] is ours[0]
    merged = dict(ours[0], cniVersion=data["cniVersion"], name=data["name"])
    c = load(BridgeConf, merged)
    assert c.ipam_type == "pycni-host-local"
    from pycni.ipam.verbs import Config as IpamConfig

    assert load(IpamConfig, merged).ipam.type == "pycni-host-local"
