"""The node agent for real (root): two node namespaces joined by a veth pair stand for two nodes on one
L2 segment. The agent runs `--once` (and as a loop) inside each, from a nodes file; the tests check its
routes (proto 156), the conflist, the nft/iptables masquerade, then pods attached with the conflist it
wrote talk across the nodes without NAT while traffic to a non-cluster address is masqueraded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REFERENCE_DIR, SUPPORT, VENV_BIN, exec_plugin, in_ns, service_account_dir

CLUSTER = "10.246.0.0/16"
N1, N2, N3 = "172.31.250.1", "172.31.250.2", "172.31.250.3"
ROOT = Path(__file__).resolve().parents[2]


def nodes_doc(*entries) -> str:
    return json.dumps([{"name": n, "address": a, "podCIDRs": c} for n, a, c in entries])


class Cluster:
    def __init__(self, netns, tmp: Path) -> None:
        self.tmp = tmp
        self.n1, self.n2 = netns.create("pycnit-agent"), netns.create("pycnit-agent")
        self.netns = netns
        subprocess.run(["ip", "-n", self.n1, "link", "add", "e1", "type", "veth", "peer", "name", "e2", "netns",
                        self.n2], check=True)
        for ns, dev, addr in ((self.n1, "e1", N1), (self.n2, "e2", N2)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        self.nodes_file = tmp / "nodes.json"
        self.nodes_file.write_text(nodes_doc(("n1", N1, ["10.246.1.0/24"]), ("n2", N2, ["10.246.2.0/24"]),
                                             ("n3", N3, ["10.246.3.0/24"])))

    def dirs(self, node: str) -> tuple[Path, Path]:
        return self.tmp / node / "bin", self.tmp / node / "net.d"

    def agent_argv(self, node: str, *extra: str) -> list[str]:
        ns = self.n1 if node == "n1" else self.n2
        bin_dir, conf_dir = self.dirs(node)
        return ["nsenter", f"--net=/var/run/netns/{ns}", "--", sys.executable, "-m", "pycni.agent",
                "--node-name", node, "--nodes-file", str(self.nodes_file), "--cni-bin-dir", str(bin_dir),
                "--cni-conf-dir", str(conf_dir), "--cluster-cidr", CLUSTER,
                "--ipam-data-dir", str(self.tmp / node / "ipam"), "--state-file", str(self.tmp / node / "agent.json"),
                *extra]

    def once(self, node: str, *extra: str) -> dict:
        proc = subprocess.run(self.agent_argv(node, "--once", *extra), capture_output=True, text=True, timeout=60, check=False)
        assert proc.stdout, proc.stderr
        status = json.loads(proc.stdout)
        status["rc"] = proc.returncode
        return status

    def routes(self, ns: str, family: str = "-4") -> list[str]:
        out = in_ns(ns, "ip", family, "route", "show", "proto", "156").stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())


@pytest.fixture
def cluster(netns, tmp_path) -> Cluster:
    return Cluster(netns, tmp_path)


def test_once_routes_conflist_nft(cluster):
    s = cluster.once("n1")
    assert s["rc"] == 0, s
    assert s["errors"] == [] and s["podCIDRs"] == ["10.246.1.0/24"] and s["masq"] == "nftables"
    assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.2 dev e1", "10.246.3.0/24 via 172.31.250.3 dev e1"]
    conf = json.loads((cluster.dirs("n1")[1] / "10-pycni.conflist").read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.246.1.0/24"}]]
    assert conf["plugins"][0]["ipMasq"] is False and conf["plugins"][1]["type"] == "portmap"
    table = in_ns(cluster.n1, "nft", "list", "table", "inet", "pycni-agent").stdout
    assert "10.246.1.0/24" in table and "10.246.0.0/16" in table and "masquerade" in table
    assert in_ns(cluster.n1, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"

    # somebody else's route is never touched, even one to a pod CIDR we would route
    in_ns(cluster.n1, "ip", "route", "add", "10.246.9.0/24", "via", "172.31.250.9")
    cluster.nodes_file.write_text(nodes_doc(("n1", N1, ["10.246.1.0/24"]), ("n2", "172.31.250.22", ["10.246.2.0/24"]),
                                            ("n9", "172.31.250.99", ["10.246.9.0/24"])))
    s = cluster.once("n1")
    assert s["rc"] == 1 and any("10.246.9.0/24" in e and "not ours" in e for e in s["errors"]), s
    assert "replace 10.246.2.0/24 via 172.31.250.22" in s["changes"]
    assert "del 10.246.3.0/24 via 172.31.250.3" in s["changes"]          # n3 left
    assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.22 dev e1"]
    assert "10.246.9.0/24 via 172.31.250.9 dev e1" in in_ns(cluster.n1, "ip", "route").stdout
    assert not any("wrote" in c for c in s["changes"])                   # conflist unchanged: not rewritten

    # the nft table is repaired when someone deletes it; --cleanup removes routes and table
    in_ns(cluster.n1, "nft", "delete", "table", "inet", "pycni-agent")
    cluster.once("n1")
    assert in_ns(cluster.n1, "nft", "list", "table", "inet", "pycni-agent", check=False).returncode == 0
    proc = subprocess.run(cluster.agent_argv("n1", "--cleanup"), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert cluster.routes(cluster.n1) == []
    assert in_ns(cluster.n1, "nft", "list", "table", "inet", "pycni-agent", check=False).returncode != 0
    assert "10.246.9.0/24 via 172.31.250.9" in in_ns(cluster.n1, "ip", "route").stdout


def test_iptables_backend_and_dual_stack(cluster):
    for ns, addr in ((cluster.n1, "fd31::1"), (cluster.n2, "fd31::2")):
        in_ns(ns, "ip", "addr", "add", f"{addr}/64", "dev", "e1" if ns == cluster.n1 else "e2", "nodad")
    cluster.nodes_file.write_text(json.dumps([
        {"name": "n1", "address": [N1, "fd31::1"], "podCIDRs": ["10.246.1.0/24", "fd46:1::/64"]},
        {"name": "n2", "address": [N2, "fd31::2"], "podCIDRs": ["10.246.2.0/24", "fd46:2::/64"]}]))
    s = cluster.once("n1", "--masq-backend", "iptables", "--cluster-cidr", "fd46::/56")
    assert s["rc"] == 0 and s["masq"] == "iptables", s
    assert cluster.routes(cluster.n1, "-6") == ["fd46:2::/64 via fd31::2 dev e1 metric 1024 pref medium"]
    v4 = in_ns(cluster.n1, "iptables", "-t", "nat", "-S").stdout
    assert "-A POSTROUTING -s 10.246.1.0/24 -m comment --comment pycni-agent -j PYCNI-AGENT-MASQ" in v4
    assert "-A PYCNI-AGENT-MASQ -d 10.246.0.0/16 -j RETURN" in v4 and "-A PYCNI-AGENT-MASQ -j MASQUERADE" in v4
    v6 = in_ns(cluster.n1, "ip6tables", "-t", "nat", "-S").stdout
    assert "-s fd46:1::/64" in v6 and "-d fd46::/56 -j RETURN" in v6
    conf = json.loads((cluster.dirs("n1")[1] / "10-pycni.conflist").read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.246.1.0/24"}], [{"subnet": "fd46:1::/64"}]]
    assert in_ns(cluster.n1, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    s2 = cluster.once("n1", "--masq-backend", "iptables", "--cluster-cidr", "fd46::/56")
    assert in_ns(cluster.n1, "iptables", "-t", "nat", "-S").stdout.count("pycni-agent") == 1  # not duplicated
    assert s2["rc"] == 0
    proc = subprocess.run(cluster.agent_argv("n1", "--cleanup"), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "PYCNI" not in in_ns(cluster.n1, "iptables", "-t", "nat", "-S").stdout
    assert "PYCNI" not in in_ns(cluster.n1, "ip6tables", "-t", "nat", "-S").stdout
    assert cluster.routes(cluster.n1, "-6") == []


def test_installs_the_bundle(cluster, bundle_dir):
    s = cluster.once("n1", "--bundle-dir", str(bundle_dir))
    assert s["rc"] == 0 and any(c.startswith("installed bundle") for c in s["changes"]), s
    bin_dir = cluster.dirs("n1")[0]
    out = subprocess.run([str(bin_dir / "pycni")], env={"CNI_COMMAND": "VERSION"}, input=b"{}",
                         capture_output=True, timeout=30, check=False)
    assert json.loads(out.stdout)["supportedVersions"], out
    s = cluster.once("n1", "--bundle-dir", str(bundle_dir))
    assert not any(c.startswith("installed") for c in s["changes"])


def test_loop_follows_changes_and_stops_on_sigterm(cluster):
    proc = subprocess.Popen(cluster.agent_argv("n1", "--interval", "0.3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(cluster.routes(cluster.n1)) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(cluster.routes(cluster.n1)) == 2
        cluster.nodes_file.write_text(nodes_doc(("n1", N1, ["10.246.1.0/24"]), ("n2", N2, ["10.246.2.0/24"])))
        while len(cluster.routes(cluster.n1)) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.2 dev e1"]
        # drift: our route and our nft table removed behind the agent's back are restored next round
        in_ns(cluster.n1, "ip", "route", "del", "10.246.2.0/24")
        in_ns(cluster.n1, "nft", "delete", "table", "inet", "pycni-agent")
        while (not cluster.routes(cluster.n1) or in_ns(cluster.n1, "nft", "list", "table", "inet", "pycni-agent",
                                                        check=False).returncode) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.2 dev e1"]
        assert "masquerade" in in_ns(cluster.n1, "nft", "list", "table", "inet", "pycni-agent").stdout
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 3
        assert "stopping" in proc.stderr.read()
        assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.2 dev e1"]  # left in place
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _add_pod(cluster: Cluster, node: str, ns_node: str) -> tuple[str, str]:
    """A pod namespace attached by the bridge plugin with the conflist the agent wrote."""
    conf = json.loads((cluster.dirs(node)[1] / "10-pycni.conflist").read_text())
    plugin = dict(conf["plugins"][0], cniVersion=conf["cniVersion"], name=conf["name"])
    pod = cluster.netns.create("pycnit-agpod")
    r = exec_plugin("pycni", "ADD", plugin, container_id=f"c-{pod}", netns=f"/var/run/netns/{pod}", node=ns_node,
                    path=f"{VENV_BIN}:{REFERENCE_DIR}")
    assert r.returncode == 0, r.stdout + r.stderr
    return pod, r.json["ips"][0]["address"].split("/")[0]


def _masq_packets(ns: str) -> int:
    out = in_ns(ns, "nft", "list", "table", "inet", "pycni-agent").stdout
    return int(out.split("counter packets ")[1].split()[0])


def test_pods_across_nodes_without_nat_and_masquerade_out(cluster):
    for node in ("n1", "n2"):
        assert cluster.once(node)["rc"] == 0
    pod1, ip1 = _add_pod(cluster, "n1", cluster.n1)
    _pod2, ip2 = _add_pod(cluster, "n2", cluster.n2)
    assert ip1.startswith("10.246.1.") and ip2.startswith("10.246.2.")
    before = _masq_packets(cluster.n1)
    r = in_ns(pod1, "ping", "-c", "2", "-W", "2", ip2, check=False)
    assert r.returncode == 0, r.stdout + r.stderr           # routed via the agent's host-gw routes
    assert _masq_packets(cluster.n1) == before              # pod -> pod: not masqueraded
    # pod -> n2's node address (outside the cluster CIDR): masqueraded to n1's address
    r = in_ns(pod1, "ping", "-c", "1", "-W", "2", N2, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _masq_packets(cluster.n1) > before
    conntrack = in_ns(cluster.n1, "cat", "/proc/net/nf_conntrack", check=False).stdout
    if conntrack:  # where the kernel exposes it: the reply of the NATed flow is addressed to n1 itself
        assert any(f"dst={N2}" in line and f"src={N2} dst={N1}" in line for line in conntrack.splitlines())



def _k8s_node(name: str, ip: str, cidr: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl for the fake API server's certificate")
def test_kube_mode_follows_the_api_and_stops_during_a_watch(cluster):
    """`--kube` for real: a fake API server (TLS, bearer token) inside node n1's namespace, the agent
    reading it with a service account dir; a node added through the API is routed within a watch
    round-trip, and SIGTERM ends the agent while it blocks in a watch."""
    sa, key = service_account_dir(cluster.tmp)
    api_nodes = cluster.tmp / "api-nodes.json"
    api_nodes.write_text(json.dumps([_k8s_node("n1", N1, "10.246.1.0/24"), _k8s_node("n2", N2, "10.246.2.0/24")]))
    port = "16443"
    server = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{cluster.n1}", "--", sys.executable,
                               str(SUPPORT / "agent_fake_api.py"), port, str(api_nodes),
                               str(sa / "ca.crt"), str(key), str(sa / "token")],
                              stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        assert server.stdout.readline().strip() == "ready"
        bin_dir, conf_dir = cluster.dirs("n1")
        env = {"PATH": os.environ["PATH"], "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        argv = ["nsenter", f"--net=/var/run/netns/{cluster.n1}", "--", sys.executable, "-m", "pycni.agent",
                "--node-name", "n1", "--kube", "--kube-sa-dir", str(sa), "--cni-bin-dir", str(bin_dir),
                "--cni-conf-dir", str(conf_dir), "--cluster-cidr", CLUSTER, "--ipam-data-dir", str(cluster.tmp / "ipam"),
                "--state-file", str(cluster.tmp / "agent-kube.json")]
        once = subprocess.run([*argv, "--once"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert once.returncode == 0, once.stdout + once.stderr
        assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.2 dev e1"]
        # the loop, with a long interval: only the watch can make it notice the new node quickly
        agent = subprocess.Popen([*argv, "--interval", "60"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # first round done, now blocked in the watch
        t0 = time.monotonic()
        tmp = api_nodes.with_suffix(".tmp")
        tmp.write_text(json.dumps([_k8s_node("n1", N1, "10.246.1.0/24"), _k8s_node("n2", N2, "10.246.2.0/24"),
                                   _k8s_node("n3", N3, "10.246.3.0/24")]))
        tmp.rename(api_nodes)
        while len(cluster.routes(cluster.n1)) != 2 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert cluster.routes(cluster.n1) == ["10.246.2.0/24 via 172.31.250.2 dev e1",
                                              "10.246.3.0/24 via 172.31.250.3 dev e1"]
        assert time.monotonic() - t0 < 5, "the watch did not wake the agent"
        time.sleep(1.5)  # blocked in the next watch again
        t1 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert time.monotonic() - t1 < 3, "SIGTERM did not interrupt the watch"
    finally:
        for proc in (agent, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
