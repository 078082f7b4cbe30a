"""The bridge plugin for real: root, each test inside its own node namespace (see test_bridge_support)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_bridge_support import (
    CNI_PATH,
    Env,
    bridge_run_dir_cleanup,
    ips_of,
    needs_root,
    ns_path,
    start_tcp_server,
    stop,
    tcp_get,
    veth_of,
)

__all__ = ["bridge_run_dir_cleanup"]  # a session fixture, imported to register it

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture
def env(netns, node, tmp_path) -> Env:
    return Env(netns, node, tmp_path)


# -- ADD / DEL basics ------------------------------------------------------------------------------


def test_add_result_shape_links_and_sysctls(env):
    conf = env.conf(mtu=1400)
    pod = env.pod()
    result = env.add(conf, pod)  # speed is measured by `make bench`, never here
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "cni0" and names[2] == "eth0"
    assert names[1].startswith("veth") and len(names[1]) == 12
    assert result["interfaces"][2]["sandbox"] == pod.path
    assert "sandbox" not in result["interfaces"][0] and "sandbox" not in result["interfaces"][1]
    assert result["ips"] == [{"interface": 2, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}]
    assert "routes" not in result  # isDefaultGateway not set, IPAM gave none
    node_links = env.links()
    assert node_links["cni0"]["mtu"] == 1400 and node_links[names[1]]["mtu"] == 1400
    assert node_links[names[1]]["master"] == "cni0"
    assert node_links["cni0"]["address"] == result["interfaces"][0]["mac"]
    pod_links = env.links(pod.name)
    assert pod_links["eth0"]["mtu"] == 1400
    assert pod_links["eth0"]["address"] == result["interfaces"][2]["mac"]
    assert "UP" in pod_links["eth0"]["flags"]
    assert env.addrs(env.node, "cni0") == ["10.77.0.1/24"]
    assert env.addrs(pod.name, "eth0") == ["10.77.0.2/24"]
    assert env.sysctl(env.node, "net.ipv4.ip_forward") == "1"
    assert env.sysctl(env.node, f"net.ipv6.conf.{names[1]}.accept_ra") == "0"
    assert env.sysctl(env.node, "net.ipv6.conf.cni0.accept_ra") == "0"
    assert env.sysctl(pod.name, "net.ipv6.conf.eth0.accept_dad") == "0"
    assert env.sysctl(pod.name, "net.ipv4.conf.eth0.arp_notify") == "1"
    assert env.ping("10.77.0.2")


def test_one_add_in_process(env):
    """One ADD through runner.run inside an interpreter (the daemon's path); its speed is `make bench`'s."""
    conf = env.conf()
    pod1, pod2 = env.pod(), env.pod()
    env.add(conf, pod1)  # bridge creation on the first one
    code = (
        "import json,os,sys,time\n"
        "from pycni import runner\n"
        "import pycni.bridge.verbs, pycni.bridge.links\n"
        "import pyroute2\n"
        "env=json.loads(sys.argv[1]); data=sys.argv[2].encode()\n"
        "t=time.perf_counter(); rc,out=runner.run('pycni', env, data); dt=time.perf_counter()-t\n"
        "print(json.dumps({'rc':rc,'dt':dt,'out':out}))\n"
    )
    cenv = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod2.cid, "CNI_NETNS": pod2.path, "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni"}
    import sys

    out = env.node_cmd(sys.executable, "-c", code, json.dumps(cenv), json.dumps(conf))
    data = json.loads(out)
    assert data["rc"] == 0, data
    assert json.loads(data["out"])["ips"][0]["address"] == "10.77.0.3/24", data  # pod1 holds .2


def test_dual_stack(env):
    conf = env.conf(ranges=[[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]], isDefaultGateway=True)
    pod = env.pod()
    result = env.add(conf, pod)
    assert ips_of(result, 4) == ["10.77.0.2/24"] and ips_of(result, 6) == ["fd77::2/64"]
    assert {r["dst"]: r["gw"] for r in result["routes"]} == {"0.0.0.0/0": "10.77.0.1", "::/0": "fd77::1"}
    assert sorted(env.addrs(env.node, "cni0")) == ["10.77.0.1/24", "fd77::1/64"]
    assert "fd77::2/64" in env.addrs(pod.name, "eth0")
    v6 = json.loads(env.pod_cmd(pod, "ip", "-j", "-6", "addr", "show", "dev", "eth0"))
    assert not any("tentative" in a for link in v6 for a in link["addr_info"])  # never waits for DAD
    assert "default via fd77::1" in env.pod_cmd(pod, "ip", "-6", "route")
    assert "default via 10.77.0.1" in env.pod_cmd(pod, "ip", "route")
    assert env.ping("10.77.0.2") and env.ping("fd77::2")
    assert env.sysctl(env.node, "net.ipv6.conf.all.forwarding") == "1"
    env.delete(conf, pod)
    assert env.leases() == []


def test_del_is_idempotent_and_leaves_nothing(env):
    conf = env.conf(ipMasq=True)
    before_fw = env.firewall()
    pod = env.pod()
    result = env.add(conf, pod)
    assert env.leases() == ["10.77.0.2"]
    assert env.firewall() != before_fw
    env.delete(conf, pod)
    env.delete(conf, pod)  # again
    assert veth_of(result) not in env.links()
    assert "eth0" not in env.links(pod.name)
    assert env.leases() == []
    assert env.firewall() == before_fw


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_del_with_empty_netns_removes_everything(env, backend):
    """containerd's second DEL comes with an empty CNI_NETNS: the reference leaks masquerade rules
    then (plugins #810); pycni keys them by attachment."""
    conf = env.conf(ipMasq=True, ipMasqBackend=backend)
    before_fw = env.firewall()
    pod = env.pod()
    result = env.add(conf, pod)
    env.delete(conf, pod, netns=None)
    assert veth_of(result) not in env.links()
    assert "eth0" not in env.links(pod.name)  # its peer went with the host veth
    assert env.leases() == []
    assert env.firewall() == before_fw


def test_del_after_netns_is_gone(env):
    conf = env.conf(ipMasq=True)
    before_fw = env.firewall()
    pod = env.pod()
    env.add(conf, pod)
    env.netns.created.remove(pod.name)
    import subprocess

    subprocess.run(["ip", "netns", "del", pod.name], check=True)
    env.delete(conf, pod)  # the path no longer exists
    env.delete(conf, pod, netns=None)
    assert env.leases() == []
    assert env.firewall() == before_fw


def test_add_fails_when_ifname_exists(env):
    conf = env.conf()
    pod = env.pod()
    env.pod_cmd(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    res = env.run("ADD", conf, pod)
    assert res.returncode != 0 and res.json["code"] == 101
    assert "already exists" in res.json["msg"]
    assert env.leases() == []
    assert [n for n in env.links() if n.startswith("veth")] == []


def test_rollback_after_ipam(env):
    """A failure after the IPAM ADD (bridge holds another IPv4 address, no forceAddress) undoes it all."""
    conf = env.conf(ipMasq=True)
    before_fw = env.firewall()
    env.node_cmd("ip", "link", "add", "cni0", "type", "bridge")
    env.node_cmd("ip", "addr", "add", "10.55.0.1/24", "dev", "cni0")
    pod = env.pod()
    res = env.run("ADD", conf, pod)
    assert res.returncode != 0 and res.json["code"] == 101, res.stdout
    assert "already has an IP address" in res.json["msg"]
    assert env.leases() == []
    assert [n for n in env.links() if n.startswith("veth")] == []
    assert "eth0" not in env.links(pod.name)
    assert env.firewall() == before_fw
    # forceAddress replaces it
    result = env.add(env.conf(forceAddress=True), pod)
    assert env.addrs(env.node, "cni0") == ["10.77.0.1/24"]
    assert result["ips"][0]["address"].startswith("10.77.0.")


def test_bridge_mac_is_pinned(env):
    conf = env.conf()
    pods = [env.pod() for _ in range(3)]
    macs = {env.add(conf, p)["interfaces"][0]["mac"] for p in pods}
    assert len(macs) == 1
    assert env.links()["cni0"]["address"] in macs
    env.delete(conf, pods[0])
    assert env.links()["cni0"]["address"] in macs


def test_chained_prev_result_is_passed_through(env):
    conf = env.conf()
    conf["prevResult"] = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0", "sandbox": "/x"}],
                          "ips": [{"interface": 0, "address": "10.9.9.9/32"}], "dns": {"nameservers": ["1.1.1.1"]}}
    pod = env.pod()
    result = env.add(conf, pod)
    assert next(i["name"] for i in result["interfaces"]) == "lo0"
    assert result["ips"][0]["address"] == "10.9.9.9/32"
    assert result["ips"][1] == {"interface": 3, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}
    assert result["dns"] == {"nameservers": ["1.1.1.1"]}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.1.0"])
def test_result_versions(env, version):
    pod = env.pod()
    ipam = "pycni-host-local" if version == "1.1.0" else "host-local"  # Debian's stops at 1.0.0
    result = env.add(env.conf(version=version, mtu=1450, ipam_type=ipam), pod)
    assert result["cniVersion"] == version
    if version < "1.0.0":
        assert result["ips"][0]["version"] == "4"
    if version == "1.1.0":
        assert result["interfaces"][2]["mtu"] == 1450


def test_get_link_asks_the_namespace_of_its_handles(env):
    """links.get_link(nl, name) looks in the namespace of the handles it is given: a pod's (opened in
    the pod, usable inside `with pod` only - outside is refused, not silently the node's) or the node's."""
    pod = env.pod()
    env.pod_cmd(pod, "ip", "link", "add", "onlyinpod", "type", "veth", "peer", "name", "onlyinpod1")
    code = (
        "import json, sys\n"
        "from pycni.bridge import links, netlink, netns\n"
        "pod = netns.Pod(sys.argv[1])\n"
        "with pod:\n"
        "    inside = links.get_link(pod.nl, 'onlyinpod')\n"
        "with pod:\n"
        "    again = links.get_link(pod.nl, 'onlyinpod')  # the same socket, kept across `with` blocks\n"
        "try:\n"
        "    pod.nl\n"
        "    refused = False\n"
        "except RuntimeError:\n"
        "    refused = True\n"
        "with netlink.handles() as nl:\n"
        "    node = links.get_link(nl, 'onlyinpod')\n"
        "pod.close()\n"
        "print(json.dumps([inside and inside.kind, again and again.kind, refused, node]))\n"
    )
    assert json.loads(env.node_cmd(sys.executable, "-c", code, pod.path)) == ["veth", "veth", True, None]


# -- options ---------------------------------------------------------------------------------------


def test_not_gateway_and_layer2(env):
    pod = env.pod()
    env.add(env.conf(isGateway=False), pod)
    assert env.addrs(env.node, "cni0") == []  # (host-local still reports its gateway)
    assert env.sysctl(env.node, "net.ipv4.ip_forward") == "0"
    pod2 = env.pod()
    result = env.add(env.conf(subnet=None), pod2)  # no ipam: L2 only, interface still up
    assert "ips" not in result
    assert "UP" in env.links(pod2.name)["eth0"]["flags"]


def test_default_gateway_and_ipam_routes(env):
    conf = env.conf(isDefaultGateway=True, isGateway=False)
    conf["ipam"]["routes"] = [{"dst": "192.168.200.0/24"}]
    pod = env.pod()
    result = env.add(conf, pod)
    assert result["ips"][0]["gateway"] == "10.77.0.1"  # isDefaultGateway implies isGateway
    assert {"dst": "0.0.0.0/0", "gw": "10.77.0.1"} in result["routes"]
    routes = env.pod_cmd(pod, "ip", "route")
    assert "default via 10.77.0.1" in routes and "192.168.200.0/24 via 10.77.0.1" in routes
    assert env.addrs(env.node, "cni0") == ["10.77.0.1/24"]
    # protocol "boot", as iproute2 and the reference plugin add routes (pyroute2's default is "static")
    # (`ip -j` leaves "boot" out; `ip -d` prints every route's protocol)
    via = [line.split() for line in env.pod_cmd(pod, "ip", "-d", "route").splitlines() if " via " in line]
    assert sorted((r[1], r[r.index("proto") + 1]) for r in via) == [("192.168.200.0/24", "boot"), ("default", "boot")]


def test_hairpin_isolation_promisc(env):
    pod = env.pod()
    result = env.add(env.conf(hairpinMode=True, portIsolation=True), pod)
    port = json.loads(env.node_cmd("bridge", "-j", "-d", "link", "show", "dev", veth_of(result)))[0]
    assert port["hairpin"] is True and port["isolated"] is True
    pod2 = env.pod()
    env.add(env.conf(promiscMode=True), pod2)
    assert "PROMISC" in env.links()["cni0"]["flags"] or env.links()["cni0"].get("promiscuity", 0) > 0
    bad = env.run("ADD", env.conf(promiscMode=True, hairpinMode=True), env.pod())
    assert bad.returncode != 0 and bad.json["code"] == 7 and "hairpin" in bad.json["details"]


@pytest.fixture
def vlan_filtering(env):
    probe = env.node_cmd("ip", "link", "add", "probe0", "type", "bridge", "vlan_filtering", "1", check=False)
    links = env.links()
    if "probe0" not in links:
        pytest.skip("this kernel has no bridge VLAN filtering " + probe)
    env.node_cmd("ip", "link", "del", "probe0")


def test_vlan_unsupported_kernel_is_a_clear_error(env):
    env.node_cmd("ip", "link", "add", "probe0", "type", "bridge", "vlan_filtering", "1", check=False)
    if "probe0" in env.links():
        pytest.skip("this kernel has bridge VLAN filtering")
    res = env.run("ADD", env.conf(vlan=100), env.pod())
    assert res.returncode != 0 and res.json["code"] == 101 and "VLAN" in res.json["msg"]
    assert env.leases() == []


def test_vlan_access_port_and_gateway(env, vlan_filtering):
    pod = env.pod()
    result = env.add(env.conf(bridge="brv", vlan=100, preserveDefaultVlan=False), pod)
    vlans = json.loads(env.node_cmd("bridge", "-j", "vlan", "show", "dev", veth_of(result)))
    entries = vlans[0]["vlans"]
    assert [v["vlan"] for v in entries] == [100]
    assert set(entries[0]["flags"]) >= {"PVID", "Egress Untagged"}
    assert result["interfaces"][3]["name"] == "brv.100"
    assert env.addrs(env.node, "brv.100") == ["10.77.0.1/24"]
    assert env.ping("10.77.0.2")
    assert env.links()["brv"]["linkinfo"]["info_data"]["vlan_filtering"] == 1


def test_vlan_trunk(env, vlan_filtering):
    pod = env.pod()
    conf = env.conf(isGateway=False, vlanTrunk=[{"id": 42}, {"minID": 100, "maxID": 102}])
    result = env.add(conf, pod)
    vlans = json.loads(env.node_cmd("bridge", "-j", "vlan", "show", "dev", veth_of(result)))
    ids = sorted(v["vlan"] for v in vlans[0]["vlans"])
    assert ids == [1, 42, 100, 101, 102]  # preserveDefaultVlan defaults to true
    bad = env.run("ADD", env.conf(vlan=5, vlanTrunk=[{"id": 6}]), env.pod())
    assert bad.returncode != 0 and bad.json["code"] == 7


def test_enabledad(env):
    pod = env.pod()
    conf = env.conf(ranges=[[{"subnet": "fd78::/64"}]], enabledad=True)
    env.add(conf, pod)
    assert env.sysctl(pod.name, "net.ipv6.conf.eth0.accept_dad") == "1"
    assert env.sysctl(pod.name, "net.ipv6.conf.eth0.enhanced_dad") == "1"


def test_mac_sources_in_priority_order(env):
    conf = env.conf()
    pod = env.pod()
    result = env.add(conf, pod, args="IgnoreUnknown=1;MAC=02:00:00:00:00:01")
    assert result["interfaces"][2]["mac"] == "02:00:00:00:00:01"
    conf2 = env.conf(args={"cni": {"mac": "02:00:00:00:00:02"}})
    pod2 = env.pod()
    assert env.add(conf2, pod2, args="IgnoreUnknown=1;MAC=02:00:00:00:00:01")["interfaces"][2]["mac"] == \
        "02:00:00:00:00:02"
    conf3 = env.conf(args={"cni": {"mac": "02:00:00:00:00:02"}}, runtimeConfig={"mac": "02:00:00:00:00:03"})
    pod3 = env.pod()
    assert env.add(conf3, pod3)["interfaces"][2]["mac"] == "02:00:00:00:00:03"
    assert env.links(pod3.name)["eth0"]["address"] == "02:00:00:00:00:03"
    bad = env.run("ADD", env.conf(runtimeConfig={"mac": "01:00:00:00:00:01"}), env.pod())
    assert bad.returncode != 0 and bad.json["code"] == 7 and "runtimeConfig.mac" in bad.json["msg"]


def test_dns_from_config_wins(env):
    pod = env.pod()
    result = env.add(env.conf(dns={"nameservers": ["10.77.0.53"], "search": ["svc.local"]}), pod)
    assert result["dns"] == {"nameservers": ["10.77.0.53"], "search": ["svc.local"]}


def test_disable_container_interface(env):
    pod = env.pod()
    result = env.add(env.conf(subnet=None, disableContainerInterface=True), pod)
    assert "UP" not in env.links(pod.name)["eth0"]["flags"]
    assert result["interfaces"][2]["name"] == "eth0"
    bad = env.run("ADD", env.conf(disableContainerInterface=True), env.pod())
    assert bad.returncode != 0 and bad.json["code"] == 7


def test_macspoofchk(env):
    before_fw = env.firewall()
    conf = env.conf(macspoofchk=True)
    pod, pod2 = env.pod(), env.pod()
    env.add(conf, pod)
    r2 = env.add(conf, pod2)
    ruleset = env.node_cmd("nft", "list", "table", "bridge", "pycni_spoofchk")
    assert veth_of(r2) in ruleset and r2["interfaces"][2]["mac"] in ruleset
    assert env.ping("10.77.0.3", ns=pod.name)
    # a spoofed source MAC from pod2 is dropped
    env.pod_cmd(pod2, "ip", "link", "set", "eth0", "address", "02:66:66:66:66:66")
    assert not env.ping("10.77.0.2", ns=pod2.name)
    env.delete(conf, pod)
    env.delete(conf, pod2)
    assert env.firewall() == before_fw


def test_invalid_config_fields(env):
    pod = env.pod()
    for keys, field in (({"bridge": "bad/name"}, "bridge"), ({"vlan": 4095}, "vlan"), ({"mtu": 20}, "mtu"),
                        ({"ipMasqBackend": "ebtables"}, "ipMasqBackend")):
        res = env.run("ADD", env.conf(**keys), pod)
        assert res.returncode != 0 and res.json["code"] == 7, res.stdout
        assert field in res.json.get("details", "") + res.json["msg"]
    assert env.leases() == []


# -- masquerade -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_masquerade_rewrites_outbound_only(env, backend):
    """Pod -> outside: source becomes the node's address; pod -> pod on the bridge: unchanged.
    "Outside" is a namespace of this test joined to the node by a veth pair."""
    conf = env.conf(ipMasq=True, ipMasqBackend=backend, isDefaultGateway=True,
                    ranges=[[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    outside = env.netns.create("pycnit-ext")
    env.node_cmd("ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext1", "netns", outside)
    env.node_cmd("ip", "addr", "add", "192.168.250.1/24", "dev", "ext0")
    env.node_cmd("ip", "-6", "addr", "add", "fd50::1/64", "dev", "ext0", "nodad")
    env.node_cmd("ip", "link", "set", "ext0", "up")
    from conftest import in_ns

    in_ns(outside, "ip", "addr", "add", "192.168.250.2/24", "dev", "ext1")
    in_ns(outside, "ip", "-6", "addr", "add", "fd50::2/64", "dev", "ext1", "nodad")
    in_ns(outside, "ip", "link", "set", "ext1", "up")
    pod, pod2 = env.pod(), env.pod()
    env.add(conf, pod)
    env.add(conf, pod2)
    server = start_tcp_server(outside, 8080, "ext")
    inside = start_tcp_server(pod2.name, 8081, "pod2")
    try:
        assert tcp_get(pod.name, "192.168.250.2", 8080) == "ext 192.168.250.1"
        assert tcp_get(pod.name, "fd50::2", 8080) == "ext fd50::1"
        assert tcp_get(pod.name, "10.77.0.3", 8081) == "pod2 10.77.0.2"
    finally:
        stop(server)
        stop(inside)
    # one rule set per network, not one per pod (cni #215)
    if backend == "nftables":
        ruleset = env.node_cmd("nft", "list", "table", "inet", "pycni")
        assert ruleset.count("masquerade") == 2 and ruleset.count("chain ") == 1
    else:
        for tool in ("iptables-save", "ip6tables-save"):
            chains = [ln for ln in env.node_cmd(tool).splitlines() if ln.startswith(":PYCNI")]
            assert len(chains) == 1, chains


# -- CHECK / STATUS / GC ----------------------------------------------------------------------------


def test_check(env):
    conf = env.conf(ranges=[[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]], isDefaultGateway=True)
    pod = env.pod()
    result = env.add(conf, pod)
    checked = dict(conf, prevResult=result)
    ok = env.run("CHECK", checked, pod)
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout
    env.pod_cmd(pod, "ip", "route", "del", "default")
    bad = env.run("CHECK", checked, pod)
    assert bad.returncode != 0 and bad.json["code"] == 105 and "route" in bad.json["msg"]
    env.pod_cmd(pod, "ip", "route", "add", "default", "via", "10.77.0.1")
    assert env.run("CHECK", checked, pod).returncode == 0
    env.pod_cmd(pod, "ip", "link", "set", "eth0", "address", "02:12:34:56:78:9a")
    bad = env.run("CHECK", checked, pod)
    assert bad.returncode != 0 and bad.json["code"] == 105 and "MAC" in bad.json["msg"]
    nop = env.run("CHECK", conf, pod)
    assert nop.returncode != 0 and nop.json["code"] == 7


def test_status(env):
    conf = env.conf(version="1.1.0", ipMasq=True, ipam_type="pycni-host-local")
    ok = env.run("STATUS", conf, None)
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
    env.node_cmd("ip", "link", "add", "cni0", "type", "veth", "peer", "name", "other0")
    bad = env.run("STATUS", conf, None)
    assert bad.returncode != 0 and bad.json["code"] == 50
    old = env.run("STATUS", env.conf(version="1.0.0"), None)
    assert old.json["code"] == 1


def test_gc_removes_unlisted_attachments(env):
    conf = env.conf(version="1.1.0", ipMasq=True, macspoofchk=True, ipam_type="pycni-host-local")
    before_fw = env.firewall()
    pods = [env.pod() for _ in range(3)]
    results = [env.add(conf, p) for p in pods]
    keep = pods[1]
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": keep.cid, "ifname": "eth0"}]})
    res = env.run("GC", gc_conf, None)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr
    links = env.links()
    assert veth_of(results[1]) in links
    assert veth_of(results[0]) not in links and veth_of(results[2]) not in links
    assert env.leases() == ["10.77.0.3"]
    assert "10.77.0.3" in env.firewall() and "10.77.0.2" not in env.firewall()
    # everything gone: GC with an empty list restores the node
    res = env.run("GC", dict(conf, **{"cni.dev/attachments": []}), None)
    assert res.returncode == 0, res.stdout
    assert env.leases() == [] and env.firewall() == before_fw


# -- scale ------------------------------------------------------------------------------------------


def test_parallel_adds(env):
    conf = env.conf(ipMasq=True)
    before_fw = env.firewall()
    pods = [env.pod() for _ in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        runs = list(pool.map(lambda p: env.run("ADD", conf, p), pods))
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    ips = [r.json["ips"][0]["address"].split("/")[0] for r in runs]
    assert len(set(ips)) == 20
    assert env.addrs(env.node, "cni0") == ["10.77.0.1/24"]
    for ip in ips:
        assert env.ping(ip), ip
    with ThreadPoolExecutor(max_workers=20) as pool:
        dels = list(pool.map(lambda p: env.run("DEL", conf, p), pods))
    assert all(d.returncode == 0 for d in dels), [d.stdout for d in dels if d.returncode]
    assert env.leases() == []
    assert [n for n in env.links() if n.startswith("veth")] == []
    assert env.firewall() == before_fw


# -- issue 15: edges an attacker or an unlucky operator reaches ---------------------------------------


@pytest.mark.parametrize(("cid_len", "network"), [(211, "net4"), (64, "n" * 151), (250, "n" * 200)])
def test_long_container_id_and_network_name(env, cid_len, network):
    """The veth alias is cut to what the kernel accepts (254 bytes + NUL): ADD works like the Go
    bridge's, DEL and GC still find the veth by the alias prefix, nothing is left behind."""
    conf = env.conf(name=network)
    pod = env.pod()
    pod.cid = ("c" + pod.cid + "x" * cid_len)[:cid_len]
    result = env.add(conf, pod)
    veth = veth_of(result)
    alias = env.links()[veth].get("ifalias", "")
    assert alias.startswith("pycni:") and len(alias.encode()) <= 254, alias
    assert env.leases(network) != []
    env.delete(conf, pod)
    assert veth not in env.links() and env.leases(network) == []
    assert env.links(pod.name).keys() == {"lo"}


def test_failure_after_the_veth_exists_removes_it(env):
    """Any step that fails once the pair exists (here: the alias, made too long again as before the
    fix, so the kernel refuses it with ERANGE) removes the pair before ADD answers its error."""
    pod = env.pod()
    code = ("import pycni.bridge.verbs as v\n"
            "v.MAX_ALIAS_BYTES = 400\n"
            "from pycni.cli import main_bridge\n"
            "main_bridge()\n")
    penv = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c" * 300,
            "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH, "PYCNI_NO_DAEMON": "1"}
    proc = subprocess.run(["nsenter", f"--net={ns_path(env.node)}", "--", sys.executable, "-c", code],
                          input=json.dumps(env.conf()).encode(), env=penv, capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 101, proc.stdout + proc.stderr
    assert not [n for n in env.links() if n.startswith("veth")], "the veth pair leaked"
    assert env.links(pod.name).keys() == {"lo"} and env.leases() == []


@pytest.mark.parametrize("given", ["netns/x", "relative", "/var/run/netns/../netns/gone", "::garbage"])
def test_del_with_a_relative_or_garbage_netns_releases_everything(env, given):
    """DEL does not need the namespace (SPEC.md "DEL"): the Go bridge releases the lease whatever
    CNI_NETNS says, and so do we - the veth (found by name) and the lease both go."""
    conf = env.conf()
    pod = env.pod()
    veth = veth_of(env.add(conf, pod))
    res = env.run("DEL", conf, pod, netns=given)
    assert res.returncode == 0, res.stdout + res.stderr
    assert veth not in env.links() and env.leases() == []
    assert env.links(pod.name).keys() == {"lo"}
