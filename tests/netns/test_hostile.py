"""Hostile input to `pycni` (the bridge) and `pycni-host-local`, exec-level, in a node namespace.

Every case must end with exactly one spec error object on stdout with the right code, a non-zero
exit, no Python traceback on stderr, and nothing changed: the files under the lab's root (the lease
store byte for byte, cursor and lock included, and the "victim" files symlinks point at), the node
namespace's links and addresses, its nftables and iptables rules, and the pod namespaces.

The node holds a live attachment (bridge cni0, network "hnet", ipMasq) so that the store and the
firewall are not empty; hostile ADDs name a bridge that does not exist (hbr0), so that a request
which got as far as creating the bridge before failing is caught too. Cases that can only fail
after the bridge step (an exec'd IPAM plugin that is missing, a symlinked dataDir found when the
store opens) use cni0 and show that the rollback is complete.

tests/unit/test_ipam_bad_input.py covers ~80 further host-local cases; the host-local cases here are the ones
it does not have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import reliability as rel
from bridge_support import bridge_run_dir_cleanup

__all__ = ["bridge_run_dir_cleanup"]

NET = "hnet"
V4 = {"subnet": "10.99.0.0/24"}


class World:
    """Node + live attachment + an empty target pod + files outside the store ("victim")."""

    def __init__(self, lab: rel.Lab) -> None:
        self.lab = lab
        self.root = lab.tmp / "root"
        self.data = self.root / "ipam"
        self.victim = self.root / "victim"
        self.victim.mkdir(parents=True)
        (self.victim / "secret").write_text("do not touch\n")
        self.node = lab.netns("node")
        self.live_pod = lab.netns("live")
        self.pod = lab.netns("pod")
        self.live_cid = "livectr"
        res = rel.run("pycni", "ADD", self.conf(bridge="cni0"), node=self.node, cid=self.live_cid,
                      netns=rel.ns_path(self.live_pod))
        assert res.returncode == 0, res.stdout + res.stderr
        self.live_result = res.json
        hl = rel.run("pycni-host-local", "ADD", self.hl_conf(), node=self.node, cid="hlowner", ifname="net1",
                     netns=rel.ns_path(self.live_pod))
        assert hl.returncode == 0, hl.stdout + hl.stderr
        fifo = self.root / "fifo"
        os.mkfifo(fifo)
        self.fifo = str(fifo)
        # a dataDir that is a symlink, and a dataDir whose network directory is one (both to "victim")
        (self.root / "ipam-link").symlink_to(self.victim)
        (self.root / "ipam-netlink").mkdir()
        (self.root / "ipam-netlink" / NET).symlink_to(self.victim)

    def conf(self, bridge: str = "hbr0", version: str = "1.1.0", **keys) -> dict:
        conf = {"cniVersion": version, "name": NET, "type": "pycni", "bridge": bridge, "isGateway": True,
                "ipMasq": True, "ipMasqBackend": "nftables",
                "ipam": {"type": "pycni-host-local", "dataDir": str(self.data), "ranges": [[V4]]}}
        conf.update(keys)
        return conf

    def hl_conf(self, **ipam) -> dict:
        body = {"type": "pycni-host-local", "dataDir": str(self.data), "ranges": [[V4]]}
        body.update(ipam)
        return {"cniVersion": "1.1.0", "name": NET, "type": "pycni-host-local", "ipam": body}

    def state(self) -> dict:
        return {"files": rel.files(self.root), "links": rel.node_links(self.node),
                "firewall": rel.firewall(self.node), "pod": rel.pod_link_names(self.pod),
                "live": rel.pod_addresses(self.live_pod)}


@dataclass
class Case:
    code: int
    stdin: Callable[[World], dict | bytes]
    command: str = "ADD"
    plugin: str = "pycni"
    env: dict = field(default_factory=dict)  # overrides of cid / netns / ifname / args / path
    setup: Callable[[World], None] | None = None  # prepares files; the snapshot is taken after it


def P(code, stdin=None, command="ADD", setup=None, **env) -> Case:
    return Case(code, stdin or (lambda w: w.conf()), command, "pycni", env, setup)


def H(code, stdin=None, command="ADD", setup=None, **env) -> Case:
    return Case(code, stdin or (lambda w: w.hl_conf()), command, "pycni-host-local", env, setup)


def conf(**keys) -> Callable[[World], dict]:
    return lambda w: w.conf(**keys)


def ipam(**body) -> Callable[[World], dict]:
    return lambda w: w.conf(ipam=dict(w.conf()["ipam"], **body))


def hipam(**body) -> Callable[[World], dict]:
    return lambda w: w.hl_conf(**body)


def raw(transform: Callable[[bytes], bytes]) -> Callable[[World], bytes]:
    return lambda w: transform(json.dumps(w.conf()).encode())


def without(key: str) -> Callable[[World], dict]:
    return lambda w: {k: v for k, v in w.conf().items() if k != key}


def live(**keys) -> Callable[[World], dict]:
    """The live attachment's own configuration (bridge cni0)."""
    return lambda w: w.conf(bridge="cni0", **keys)


def prev_live(w: World) -> dict:
    return w.live_result


def sandbox_moved(w: World, path: str) -> dict:
    """The live attachment's result, its container interface claiming to be in `path`."""
    result = json.loads(json.dumps(w.live_result))
    result["interfaces"][2]["sandbox"] = path
    return result


def gc(items) -> Callable[[World], dict]:
    return lambda w: w.conf(**{"cni.dev/valid-attachments": items})


def hgc(items) -> Callable[[World], dict]:
    return lambda w: dict(w.hl_conf(), **{"cni.dev/valid-attachments": items})


LIVE = {"cid": "livectr"}
LIVE_ATT = {"containerID": "livectr", "ifname": "eth0"}
BIG = 1 << 20

CASES: dict[str, Case] = {
    # -- stdin that is not a configuration (6; 7 when over 1 MiB) --
    "malformed-json": P(6, lambda w: b'{"cniVersion": "1.1.0", "name": '),
    "truncated-json": P(6, raw(lambda b: b[: len(b) // 2])),
    "empty-stdin": P(6, lambda w: b""),
    "json-null": P(6, lambda w: b"null"),
    "json-string": P(6, lambda w: b'"pycni"'),
    "non-utf8": P(6, raw(lambda b: b.replace(b"hnet", b"h\xffnet"))),
    "nan-literal": P(6, raw(lambda b: b.replace(b'"hnet"', b"NaN"))),
    "deeply-nested": P(6, lambda w: b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "stdin-over-1MiB": P(7, raw(lambda b: b + b" " * BIG)),
    "stdin-2MiB-binary": P(7, lambda w: os.urandom(2 * BIG)),
    # -- versions (1) --
    "cniVersion-9.9.9": P(1, conf(version="9.9.9")),
    "cniVersion-0.2.0": P(1, conf(version="0.2.0")),
    "cniVersion-1.0": P(1, conf(version="1.0")),
    "cniVersion-missing": P(1, without("cniVersion")),
    "cniVersion-int": P(6, conf(version=1)),
    "CHECK-with-0.3.1": P(1, live(version="0.3.1", prevResult={}), "CHECK", **LIVE),
    "GC-with-1.0.0": P(1, lambda w: w.conf(version="1.0.0", **{"cni.dev/valid-attachments": []}), "GC"),
    "STATUS-with-0.4.0": P(1, conf(version="0.4.0"), "STATUS"),
    # -- CNI_* variables (4) --
    "unknown-command": P(4, command="DELETE"),
    "missing-CNI_PATH": P(4, path=None),
    "ifname-16-chars": P(4, ifname="e" * 16),
    "ifname-slash": P(4, ifname="../eth0"),
    "ifname-dotdot": P(4, ifname=".."),
    "ifname-newline": P(4, ifname="eth0\nx"),
    "ifname-empty": P(4, ifname=""),
    "cid-slash": P(4, cid="a/b"),
    "cid-dotdot": P(4, cid=".."),
    "cid-traversal": P(4, cid="../../etc/passwd"),
    "cid-newline": P(4, cid="livectr\nrogue"),
    "cid-traversal-on-DEL": P(4, command="DEL", cid="../livectr"),
    "netns-relative": P(4, netns="var/run/netns/x"),
    # the plugin's own namespace (the node's): libcni's ErrInvalidNetNS (8), refused before anything
    "netns-own-proc-self": P(8, conf(isDefaultGateway=True), netns="/proc/self/ns/net"),
    "netns-own-thread-self": P(8, conf(isDefaultGateway=True), netns="/proc/thread-self/ns/net"),
    "netns-own-dotdot-path": P(8, conf(bridge="cni0"), netns="/proc/self/task/../ns/net"),
    "netns-missing": P(4, netns="/var/run/netns/pycni-does-not-exist"),
    "netns-regular-file": P(4, netns="/etc/hostname"),
    "netns-directory": P(4, netns="/tmp"),
    "netns-mount-namespace": P(4, netns="/proc/self/ns/mnt"),
    "netns-dev-null": P(4, netns="/dev/null"),
    "netns-fifo": P(4, netns="@fifo"),
    "CHECK-netns-regular-file": P(4, lambda w: w.conf(bridge="cni0", prevResult=sandbox_moved(w, "/etc/hostname")),
                                  "CHECK", netns="/etc/hostname", **LIVE),
    # -- CNI_ARGS (4) --
    "args-junk": P(4, args="junk"),
    "args-a=b=c": P(4, args="a=b=c"),
    "args-empty-key": P(4, args="=value"),
    "args-unknown-key": P(4, args="FOO=bar"),
    "args-k8s-without-IgnoreUnknown": P(4, args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"),
    "args-IgnoreUnknown-maybe": P(4, args="IgnoreUnknown=maybe;FOO=1"),
    "args-MAC-garbage": P(4, args="MAC=zz:zz"),
    "args-IP-garbage": P(4, args="IP=10.99.0.x"),
    "args-IP-outside-ranges": P(103, live(), args="IP=192.168.9.9"),
    # -- network name and plugin keys (7) --
    "name-slash": P(7, conf(name="a/b")),
    "name-dotdot": P(7, conf(name="..")),
    "name-NUL": P(7, conf(name="hnet\x00x")),
    "name-newline": P(7, conf(name="hnet\n")),
    "name-int": P(7, conf(name=5)),
    "type-missing": P(7, without("type")),
    "bridge-16-chars": P(7, conf(bridge="b" * 16)),
    "bridge-slash": P(7, conf(bridge="../cni0")),
    "bridge-int": P(7, conf(bridge=0)),
    "mtu-negative": P(7, conf(mtu=-1)),
    "mtu-below-68": P(7, conf(mtu=20)),
    "mtu-over-65535": P(7, conf(mtu=70000)),
    "mtu-string": P(7, conf(mtu="big")),
    "mtu-float": P(7, conf(mtu=1.5)),
    "vlan-negative": P(7, conf(vlan=-1)),
    "vlan-4095": P(7, conf(vlan=4095)),
    "vlan-string": P(7, conf(vlan="ten")),
    "vlanTrunk-min-over-max": P(7, conf(vlanTrunk=[{"minID": 20, "maxID": 10}])),
    "vlanTrunk-not-objects": P(7, conf(vlanTrunk=[1, 2])),
    "vlan-and-vlanTrunk": P(7, conf(vlan=10, vlanTrunk=[{"id": 20}])),
    "promiscMode-and-hairpinMode": P(7, conf(promiscMode=True, hairpinMode=True)),
    "disableContainerInterface-with-ipam": P(7, conf(disableContainerInterface=True)),
    "ipMasqBackend-bogus": P(7, conf(ipMasqBackend="ebtables")),
    "isGateway-not-a-bool": P(7, conf(isGateway="maybe")),
    "capabilities-not-bools": P(7, conf(capabilities={"portMappings": "sometimes"})),
    "dns-not-an-object": P(7, conf(dns="8.8.8.8")),
    "runtimeConfig-mac-garbage": P(7, conf(runtimeConfig={"mac": "not-a-mac"})),
    "args-cni-mac-multicast": P(7, conf(args={"cni": {"mac": "01:00:5e:00:00:01"}})),
    "ipam-not-an-object": P(7, conf(ipam="host-local")),
    "ipam-type-traversal": P(7, ipam(type="../../../bin/sh")),
    "ipam-type-int": P(7, ipam(type=7)),
    # -- decoded as strictly as the Go reference (issue 14: "1500" is not an int, "yes" not a bool) --
    "mtu-string-number": P(7, conf(mtu="1500")),
    "mtu-integral-float": P(7, conf(mtu=1500.0)),
    "vlan-string-number": P(7, conf(vlan="5")),
    "isGateway-yes": P(7, conf(isGateway="yes")),
    "hairpinMode-1": P(7, conf(hairpinMode=1)),
    "ipam-without-type": P(7, lambda w: w.conf(ipam={k: v for k, v in w.conf()["ipam"].items() if k != "type"})),
    "ipam-type-empty": P(7, ipam(type="")),
    # -- integers past the kernel's types: code 7, not a netlink failure (issue 15 item 9) --
    "ipRanges-subnet-int": P(7, conf(runtimeConfig={"ipRanges": [[{"subnet": 5}]]})),
    "route-mtu-2^40": P(7, ipam(routes=[{"dst": "10.50.0.0/16", "mtu": 2**40}])),
    "route-table-2^40": P(7, ipam(routes=[{"dst": "10.50.0.0/16", "table": 2**40}])),
    "route-advmss-2^40": P(7, ipam(routes=[{"dst": "10.50.0.0/16", "advmss": 2**40}])),
    "route-priority-2^33": P(7, ipam(routes=[{"dst": "10.50.0.0/16", "priority": 2**33}])),
    "route-mtu-string": P(7, ipam(routes=[{"dst": "10.50.0.0/16", "mtu": "1400"}])),
    # -- IPAM configuration, refused before anything is created (7) --
    "subnet-garbage": P(7, ipam(ranges=[[{"subnet": "10.99.0.0/33"}]])),
    "subnet-slash-32": P(7, ipam(ranges=[[{"subnet": "10.99.0.1/32"}]])),
    "overlapping-range-sets": P(7, ipam(ranges=[[V4], [{"subnet": "10.99.0.0/16"}]])),
    "overlapping-ipRanges": P(7, conf(runtimeConfig={"ipRanges": [[V4], [{"subnet": "10.99.0.128/25"}]]})),
    "gateway-outside-subnet": P(7, ipam(ranges=[[dict(V4, gateway="10.98.0.1")]])),
    "rangeStart-outside-subnet": P(7, ipam(ranges=[[dict(V4, rangeStart="10.98.0.10")]])),
    "ranges-a-string": P(7, ipam(ranges="10.99.0.0/24")),
    "dataDir-relative": P(7, ipam(dataDir="relative/ipam")),
    "dataDir-dotdot": P(7, lambda w: w.conf(ipam=dict(w.conf()["ipam"], dataDir=f"{w.data}/../victim"))),
    # -- found only when the store opens or the delegate runs: complete rollback (cni0) --
    "dataDir-symlink": P(5, lambda w: w.conf(bridge="cni0", ipam=dict(w.conf()["ipam"],
                                                                       dataDir=str(w.root / "ipam-link")))),
    "network-dir-symlink": P(5, lambda w: w.conf(bridge="cni0", ipam=dict(w.conf()["ipam"],
                                                                           dataDir=str(w.root / "ipam-netlink")))),
    "ipam-plugin-missing": P(104, lambda w: w.conf(bridge="cni0", ipam=dict(w.conf()["ipam"], type="nosuchipam"))),
    "duplicate-attachment": P(101, live(), **LIVE),
    # -- prevResult (6 garbage, 7 not an object, 105 another version's result that does not match) --
    "ADD-prevResult-garbage": P(6, conf(prevResult={"ips": [{"address": "nope"}]})),
    "ADD-prevResult-not-an-object": P(7, conf(prevResult=[1, 2])),
    "ADD-prevResult-bad-ip-version": P(6, conf(prevResult={"ips": [{"version": "5", "address": "10.1.1.1/24"}]})),
    "ADD-prevResult-interface-out-of-range": P(6, conf(prevResult={"interfaces": [],
                                                                  "ips": [{"interface": 3,
                                                                           "address": "10.1.1.1/24"}]})),
    "CHECK-prevResult-garbage": P(6, live(prevResult={"ips": [{"address": "nope"}]}), "CHECK", **LIVE),
    "CHECK-prevResult-0.2.0-not-ours": P(105, live(prevResult={"cniVersion": "0.2.0",
                                                               "ip4": {"ip": "10.99.0.200/24"}}), "CHECK",
                                         **LIVE),
    "CHECK-without-prevResult": P(7, live(), "CHECK", **LIVE),
    # -- GC lists (7; pycni.spec.gc, docs/gc.md) - a GC without any list is not an error: tests/unit/test_spec_gc.py --
    "GC-null-with-legacy-list": P(7, lambda w: w.conf(**{"cni.dev/valid-attachments": None,
                                                         "cni.dev/attachments": [LIVE_ATT]}), "GC"),
    "GC-keys-disagree": P(7, lambda w: w.conf(**{"cni.dev/valid-attachments": [LIVE_ATT],
                                                 "cni.dev/attachments": []}), "GC"),
    "GC-entry-empty-containerID": P(7, gc([LIVE_ATT, {"containerID": "", "ifname": "eth0"}]), "GC"),
    "GC-legacy-list-not-a-list": P(7, lambda w: w.conf(**{"cni.dev/attachments": "livectr"}), "GC"),
    "GC-list-not-a-list": P(7, gc({"containerID": "x", "ifname": "eth0"}), "GC"),
    "GC-entry-garbage": P(7, gc(["livectr"]), "GC"),
    "GC-entry-without-ifname": P(7, gc([{"containerID": "livectr"}]), "GC"),
    # -- pycni-host-local: cases tests/unit/test_ipam_bad_input.py does not have --
    "hl-name-NUL": H(7, lambda w: dict(w.hl_conf(), name="hnet\x00")),
    "hl-name-newline": H(7, lambda w: dict(w.hl_conf(), name="hnet\nx")),
    "hl-dataDir-NUL": H(7, lambda w: w.hl_conf(dataDir=f"{w.data}\x00x")),
    "hl-dataDir-symlink": H(5, lambda w: w.hl_conf(dataDir=str(w.root / "ipam-link"))),
    "hl-network-dir-symlink": H(5, lambda w: w.hl_conf(dataDir=str(w.root / "ipam-netlink"))),
    "hl-DEL-network-dir-symlink": H(5, lambda w: w.hl_conf(dataDir=str(w.root / "ipam-netlink")), "DEL"),
    "hl-subnet-int": H(7, hipam(ranges=[[{"subnet": 5}]])),
    "hl-rangeEnd-garbage": H(7, hipam(ranges=[[dict(V4, rangeEnd="x")]])),
    "hl-gateway-garbage": H(7, hipam(ranges=[[dict(V4, gateway="10.99.0.300")]])),
    "hl-gateway-outside-legacy-subnet": H(7, hipam(ranges=[], subnet="10.99.0.0/24", gateway="10.98.0.1")),
    "hl-ipRanges-overlap": H(7, lambda w: dict(w.hl_conf(), runtimeConfig={"ipRanges": [[V4], [V4]]})),
    "hl-routes-gw-garbage": H(7, hipam(routes=[{"dst": "0.0.0.0/0", "gw": "gw"}])),
    "hl-ipRanges-subnet-int": H(7, lambda w: dict(w.hl_conf(), runtimeConfig={"ipRanges": [[{"subnet": 5}]]})),
    "hl-route-mtu-2^40": H(7, hipam(routes=[{"dst": "10.50.0.0/16", "mtu": 2**40}])),
    "hl-route-priority-2^33": H(7, hipam(routes=[{"dst": "10.50.0.0/16", "priority": 2**33}])),
    "hl-ipam-without-type": H(7, lambda w: dict(w.hl_conf(), ipam={k: v for k, v in w.hl_conf()["ipam"].items()
                                                                    if k != "type"})),
    "hl-GC-list-not-a-list": H(7, hgc("all"), "GC"),
    "hl-GC-null-with-legacy-list": H(7, lambda w: dict(w.hl_conf(), **{
        "cni.dev/valid-attachments": None, "cni.dev/attachments": [{"containerID": "hlowner", "ifname": "net1"}]}),
        "GC"),
    "hl-GC-entry-without-ifname": H(7, hgc([{"containerID": "hlowner"}]), "GC"),
    "hl-IgnoreUnknown-with-IP-garbage": H(4, args="IgnoreUnknown=1;IP=zz"),
    "hl-CHECK-prevResult-0.2.0-not-ours": H(105, lambda w: dict(w.hl_conf(), prevResult={
        "cniVersion": "0.2.0", "ip4": {"ip": "10.99.0.201/24"}}), "CHECK", cid="hlowner", ifname="net1"),
    "hl-CHECK-prevResult-version-mismatch": H(6, lambda w: dict(w.hl_conf(), prevResult={
        "ips": [{"version": "6", "address": "10.99.0.3/24"}]}), "CHECK", cid="hlowner", ifname="net1"),
    "hl-stdin-2MiB-binary": H(7, lambda w: os.urandom(2 * BIG)),
}


@pytest.fixture(scope="module")
def world():
    lab = rel.Lab("pycnih")
    try:
        w = World(lab)
        w.baseline = w.state()
        yield w
    finally:
        lab.cleanup()


def test_enough_cases():
    assert len(CASES) >= 60
    assert sum(c.plugin == "pycni" for c in CASES.values()) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_hostile(world: World, name: str):
    case = CASES[name]
    if case.setup is not None:
        case.setup(world)
        before = world.state()
    else:
        before = world.baseline
    env = {"cid": "hostile1", "netns": rel.ns_path(world.pod), "ifname": "eth0", "args": None,
           "path": rel.CNI_PATH}
    env.update(case.env)
    if env["netns"] == "@fifo":
        env["netns"] = world.fifo
    stdin = case.stdin(world)
    try:
        res = rel.run(case.plugin, case.command, stdin, node=world.node, **env)
        _check(world, case, stdin, res, before)
    finally:
        if world.state() != before:  # keep the next cases independent of this failure
            rel.run("pycni", "DEL", world.conf(), node=world.node, cid=env["cid"], netns=env["netns"])
            rel.sh("ip", "link", "del", "hbr0", ns=world.node, check=False)


def _check(world: World, case: Case, stdin, res: rel.Outcome, before: dict) -> None:

    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.returncode not in (0, -9), (res.returncode, res.stdout, res.stderr[-500:])
    assert res.documents == 1, res.stdout
    doc = res.json
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
    assert doc["code"] == case.code, doc
    assert isinstance(doc["msg"], str) and doc["msg"], doc
    assert doc["cniVersion"] in rel.SUPPORTED, doc
    sent = stdin.get("cniVersion") if isinstance(stdin, dict) else None
    if sent in rel.SUPPORTED:
        assert doc["cniVersion"] == sent, doc
    after = world.state()
    assert after["files"] == before["files"], "the store or a file outside it changed"
    assert after["links"] == before["links"], "node links or addresses changed"
    assert after["firewall"] == before["firewall"], "node firewall changed"
    assert after["pod"] == ["lo"], "something was created in the pod"
    assert after["live"] == before["live"] == ["10.99.0.2"], "the live attachment was touched"


def test_lease_symlink_is_never_followed(world: World):
    """A lease file replaced by a symlink to a file outside the store: DEL, ADD and a requested ADD of
    that address never follow it (never read, write or delete the target); GC removes the link itself."""
    net_dir = world.data / NET
    leased = rel.leases(net_dir)
    owner_ip = next(ip for ip, (cid, _) in leased.items() if cid == "hlowner")
    target = world.victim / "secret"
    lease = net_dir / owner_ip
    original = lease.read_bytes()
    lease.unlink()
    lease.symlink_to(target)
    try:
        hl = world.hl_conf()
        # DEL of the owner: its lease cannot be read (O_NOFOLLOW), so it is kept - and not followed
        res = rel.run("pycni-host-local", "DEL", hl, node=world.node, cid="hlowner", ifname="net1")
        assert res.returncode == 0, res.stdout
        assert lease.is_symlink() and target.read_text() == "do not touch\n"
        # asking for exactly that address: taken (103), nothing written through the link
        res = rel.run("pycni-host-local", "ADD", dict(hl, runtimeConfig={"ips": [owner_ip]}), node=world.node,
                      cid="other", ifname="net1", netns=rel.ns_path(world.pod))
        assert res.returncode != 0 and res.json["code"] == 103, res.stdout
        assert lease.is_symlink() and target.read_text() == "do not touch\n"
        # a plain ADD skips it
        res = rel.run("pycni-host-local", "ADD", hl, node=world.node, cid="other", ifname="net1",
                      netns=rel.ns_path(world.pod))
        assert res.returncode == 0, res.stdout
        assert res.json["ips"][0]["address"].split("/")[0] != owner_ip
        assert rel.run("pycni-host-local", "DEL", hl, node=world.node, cid="other", ifname="net1").returncode == 0
        # GC with the real attachments listed: the unreadable lease has no owner, the link goes, the target stays
        res = rel.run("pycni-host-local", "GC", dict(hl, **{"cni.dev/valid-attachments": [
            {"containerID": world.live_cid, "ifname": "eth0"}]}), node=world.node, cid=None, ifname=None)
        assert res.returncode == 0, res.stdout
        assert not lease.exists() and not lease.is_symlink()
        assert target.read_text() == "do not touch\n"
        assert world.live_cid in {cid for cid, _ in rel.leases(net_dir).values()}
    finally:
        if lease.is_symlink():
            lease.unlink()
        if not lease.exists():
            lease.write_bytes(original)


@pytest.mark.parametrize("name", ["lock", "last_reserved_ip.0"])
def test_store_file_symlinks_are_not_followed(world: World, name: str):
    """The lock or the cursor replaced by a symlink: the lock is refused (5), the cursor ignored and
    replaced by a regular file - the target is never written."""
    net_dir = world.data / NET
    path = net_dir / name
    saved = path.read_bytes()
    path.unlink()
    path.symlink_to(world.victim / "secret")
    cid = "symlinktest"
    try:
        res = rel.run("pycni-host-local", "ADD", world.hl_conf(), node=world.node, cid=cid, ifname="net1",
                      netns=rel.ns_path(world.pod))
        if name == "lock":
            assert res.returncode != 0 and res.json["code"] == 5, res.stdout
            assert path.is_symlink()
        else:
            assert res.returncode == 0, res.stdout
            assert not path.is_symlink() and path.read_text() == res.json["ips"][0]["address"].split("/")[0]
        assert (world.victim / "secret").read_text() == "do not touch\n"
    finally:
        rel.run("pycni-host-local", "DEL", world.hl_conf(), node=world.node, cid=cid, ifname="net1")
        if path.is_symlink() or name == "lock":
            path.unlink(missing_ok=True)
            path.write_bytes(saved)
