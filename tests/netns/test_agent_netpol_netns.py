"""NetworkPolicy for real (root): two node namespaces joined by a veth pair, each with pycni's bridge
and pods attached by the bridge plugin (the conflist the agent writes), the other node's pod CIDR
routed via it (host-gw, as the agent does). `pycni netpol` runs in each node namespace from a state
file (the API objects a watch would deliver) and loads its table; TCP/UDP echo servers in every pod
(tests/support/netpol_probe.py) answer the probes. Same-node traffic crosses the bridge and is filtered
through br_netfilter; cross-node traffic is routed and filtered at both ends."""

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

from pycni.agent import conflist

PROBE = str(SUPPORT / "netpol_probe.py")
N1, N2 = "172.31.251.1", "172.31.251.2"
CIDRS = {"n1": "10.247.1.0/24", "n2": "10.247.2.0/24"}
PORTS = ("80", "81", "8080")


def _pod_obj(ns: str, name: str, node: str, ip: str, labels: dict, named: dict) -> dict:
    return {"metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": n, "containerPort": port, "protocol": proto} for n, (port, proto) in named.items()]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


class Lab:
    def __init__(self, netns, tmp: Path) -> None:
        self.netns, self.tmp = netns, tmp
        self.node_ns = {"n1": netns.create("pycnit-np"), "n2": netns.create("pycnit-np")}
        n1, n2 = self.node_ns["n1"], self.node_ns["n2"]
        subprocess.run(["ip", "-n", n1, "link", "add", "e1", "type", "veth", "peer", "name", "e2", "netns", n2],
                       check=True)
        for node, dev, addr, other, via in (("n1", "e1", N1, "n2", N2), ("n2", "e2", N2, "n1", N1)):
            ns = self.node_ns[node]
            in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            in_ns(ns, "ip", "link", "set", dev, "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            in_ns(ns, "ip", "route", "add", CIDRS[other], "via", via)
        self.procs: list[subprocess.Popen] = []
        self.pods: dict[str, dict] = {}       # "ns/name" -> {"netns", "ip", "node", "obj"}
        self.namespaces: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.state = tmp / "state.json"

    # -- the cluster ---------------------------------------------------------------------------------

    def namespace(self, name: str, **labels: str) -> None:
        self.namespaces[name] = {"metadata": {"name": name,
                                              "labels": {"kubernetes.io/metadata.name": name, **labels}}}

    def pod(self, node: str, ns: str, name: str, labels: dict | None = None, named: dict | None = None) -> str:
        conf = conflist.render([CIDRS[node]], data_dir=str(self.tmp / node / "ipam"))
        plugin = dict(conf["plugins"][0], cniVersion=conf["cniVersion"], name=conf["name"])
        pod_ns = self.netns.create("pycnit-nppod")
        r = exec_plugin("pycni", "ADD", plugin, container_id=f"c-{pod_ns}", netns=f"/var/run/netns/{pod_ns}",
                        node=self.node_ns[node], path=f"{VENV_BIN}:{REFERENCE_DIR}")
        assert r.returncode == 0, r.stdout + r.stderr
        ip = r.json["ips"][0]["address"].split("/")[0]
        srv = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{pod_ns}", "--", sys.executable, PROBE, "serve",
                                *PORTS], stdout=subprocess.PIPE, text=True)
        self.procs.append(srv)
        assert srv.stdout.readline().strip() == "ready"
        obj = _pod_obj(ns, name, node, ip, labels if labels is not None else {"pod": name}, named or {})
        self.pods[f"{ns}/{name}"] = {"netns": pod_ns, "ip": ip, "node": node, "obj": obj}
        return ip

    def relabel_pod(self, key: str, labels: dict) -> None:
        self.pods[key]["obj"]["metadata"]["labels"] = labels

    def policy(self, ns: str, name: str, spec: dict) -> None:
        self.policies[f"{ns}/{name}"] = {"metadata": {"namespace": ns, "name": name}, "spec": spec}

    def write_state(self) -> None:
        doc = {"pods": [p["obj"] for p in self.pods.values()], "namespaces": list(self.namespaces.values()),
               "networkpolicies": list(self.policies.values())}
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.rename(self.state)

    def netpol_argv(self, node: str, *extra: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.node_ns[node]}", "--", sys.executable, "-m",
                "pycni.agent.netpol_main", "--node-name", node, "--state-file", str(self.state), *extra]

    def enforce(self) -> dict[str, dict]:
        """Write the state and run `pycni netpol --once` on both nodes."""
        self.write_state()
        out = {}
        for node in ("n1", "n2"):
            proc = subprocess.run(self.netpol_argv(node, "--once"), capture_output=True, text=True, timeout=60,
                                  check=False)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            out[node] = json.loads(proc.stdout)
            assert out[node]["errors"] == [], out[node]
        return out

    # -- traffic ---------------------------------------------------------------------------------------

    def probe(self, src: str, targets: list[tuple[str, str, str]], timeout: float = 1.0) -> dict:
        """{(dst, proto, port): reachable} for requests from pod `src`."""
        specs = [f"{proto}:{self.pods[dst]['ip']}:{port}" for dst, proto, port in targets]
        proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{self.pods[src]['netns']}", "--", sys.executable,
                               PROBE, "probe", str(timeout), *specs], capture_output=True, text=True, timeout=60,
                              check=True)
        return dict(zip(targets, json.loads(proc.stdout), strict=True))

    def matrix(self, proto: str = "tcp", port: str = "80") -> dict[tuple[str, str], bool]:
        """Reachability between every pair of distinct pods."""
        out = {}
        for src in self.pods:
            res = self.probe(src, [(dst, proto, port) for dst in self.pods if dst != src])
            out.update({(src, dst): ok for (dst, _, _), ok in res.items()})
        return out

    def expect(self, allowed: set[tuple[str, str]], proto: str = "tcp", port: str = "80") -> None:
        got = self.matrix(proto, port)
        want = {pair: pair in allowed for pair in got}
        wrong = {f"{a} -> {b} {proto}/{port}": f"{'allowed' if got[(a, b)] else 'denied'}" for a, b in got
                 if got[(a, b)] != want[(a, b)]}
        assert not wrong, wrong

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def all_pairs(pods, but=()) -> set[tuple[str, str]]:
    return {(a, b) for a in pods for b in pods if a != b} - set(but)


@pytest.fixture
def lab(netns, tmp_path):
    lab = Lab(netns, tmp_path)
    lab.namespace("x", team="red")
    lab.namespace("y", team="blue")
    lab.pod("n1", "x", "a", named={"web": (8080, "TCP"), "dns": (81, "UDP")})
    lab.pod("n1", "x", "b")
    lab.pod("n1", "y", "c")
    lab.pod("n2", "x", "d", named={"web": (81, "TCP")})
    lab.pod("n2", "y", "e")
    try:
        yield lab
    finally:
        lab.close()
        for node in ("n1", "n2"):  # the namespaces go away with their tables; be explicit anyway
            in_ns(lab.node_ns[node], "nft", "delete", "table", "inet", "pycni-netpol", check=False)


def test_same_node_traffic_reaches_the_forward_hook():
    """The premise of same-node enforcement: bridged IPv4 and IPv6 pass the IP hooks in a node namespace."""
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        pytest.fail("br_netfilter is not loaded: pods of one node could not be isolated from each other")


def test_no_policy_everything_flows_then_default_deny_ingress(lab):
    pods = list(lab.pods)
    lab.enforce()
    lab.expect(all_pairs(pods))
    lab.expect(all_pairs(pods), proto="udp", port="81")
    # a connection opened before the policy: established traffic keeps flowing (and its replies)
    holder = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{lab.pods['y/c']['netns']}", "--", sys.executable,
                               PROBE, "hold", lab.pods["x/a"]["ip"], "80"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    lab.procs.append(holder)
    assert holder.stdout.readline().strip() == "connected"

    lab.policy("x", "deny-in", {"podSelector": {}})   # policyTypes defaults to [Ingress]
    s = lab.enforce()
    assert s["n1"]["isolatedPods"] == 2 and s["n2"]["isolatedPods"] == 1, s
    into_x = {(a, b) for a in pods for b in ("x/a", "x/b", "x/d")}
    lab.expect(all_pairs(pods) - into_x)                              # same node (b->a) and cross node (e->a)
    lab.expect(all_pairs(pods) - into_x, proto="udp", port="81")
    holder.stdin.write("still there\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "still there"           # the established connection survives

    del lab.policies["x/deny-in"]                                     # removed: everything flows again
    lab.enforce()
    lab.expect(all_pairs(pods))


def test_selectors_ports_and_relabelling(lab):
    pods = list(lab.pods)
    # into x/a: pods labelled pod=b of x (podSelector), any pod of namespaces team=blue on TCP 80 only
    # (namespaceSelector), and pod e of namespace y via both selectors on UDP 81
    lab.policy("x", "a-in", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [
            {"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}],
             "ports": [{"protocol": "TCP", "port": 80}]},
            {"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
                       "podSelector": {"matchLabels": {"pod": "e"}}}], "ports": [{"protocol": "UDP", "port": 81}]},
        ]})
    lab.enforce()
    others = all_pairs(pods, but=[(p, "x/a") for p in pods])
    lab.expect(others | {("x/b", "x/a"), ("y/c", "x/a"), ("y/e", "x/a")})                 # tcp/80
    lab.expect(others | {("x/b", "x/a")}, port="81")                                       # tcp/81
    lab.expect(others | {("x/b", "x/a"), ("y/e", "x/a")}, proto="udp", port="81")          # udp/81
    lab.expect(others | {("x/b", "x/a")}, proto="udp", port="80")                          # udp/80

    # relabel pod d to pod=b: it is selected at once; relabel namespace y: its pods lose TCP 80
    lab.relabel_pod("x/d", {"pod": "b"})
    lab.namespace("y", team="green")
    lab.enforce()
    lab.expect(others | {("x/b", "x/a"), ("x/d", "x/a")})
    lab.expect(others | {("x/b", "x/a"), ("x/d", "x/a"), ("y/e", "x/a")}, proto="udp", port="81")


def test_egress_ipblock_except_endport_named_ports_and_replies(lab):
    ip = {k: v["ip"] for k, v in lab.pods.items()}
    # x/b may only send to the cluster /16 except d's address, on TCP 79-80 (endPort), and to named port
    # "web" (8080 on a, 81 on d: resolved per destination pod)
    lab.policy("x", "b-out", {
        "podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.247.0.0/16", "except": [f"{ip['x/d']}/32"]}}],
                    "ports": [{"protocol": "TCP", "port": 79, "endPort": 80}]},
                   {"ports": [{"port": "web"}]}]})
    # x/a accepts ingress on its named port "web" (8080) only, from anywhere; and UDP "dns" (81)
    lab.policy("x", "a-in", {"podSelector": {"matchLabels": {"pod": "a"}},
                             "ingress": [{"ports": [{"port": "web"}, {"protocol": "UDP", "port": "dns"}]}]})
    # y/e isolates its egress completely but accepts everything: replies must still get out
    lab.policy("y", "e-quiet", {"podSelector": {"matchLabels": {"pod": "e"}}, "policyTypes": ["Ingress", "Egress"],
                                "ingress": [{}]})
    s = lab.enforce()
    assert s["n1"]["isolatedPods"] == 2 and s["n2"]["isolatedPods"] == 1

    from_b = lab.probe("x/b", [(d, "tcp", p) for d in ("x/a", "y/c", "x/d", "y/e") for p in PORTS])
    assert {k for k, ok in from_b.items() if ok} == {
        ("x/a", "tcp", "8080"),                       # named port web on a (a's ingress allows web too)
        ("y/c", "tcp", "80"),                         # ipBlock, port range 79-80
        ("x/d", "tcp", "81"),                         # named port web on d; 80 to d is in the except
        ("y/e", "tcp", "80")}, from_b
    assert lab.probe("x/b", [("y/c", "udp", "80")]) == {("y/c", "udp", "80"): False}
    # into a: only 8080/tcp and 81/udp, from everyone (same node and cross node)
    into_a = [("x/a", "tcp", "80"), ("x/a", "tcp", "8080"), ("x/a", "udp", "81"), ("x/a", "udp", "80")]
    for src in ("y/c", "x/d"):
        assert lab.probe(src, into_a) == dict(zip(into_a, [False, True, True, False], strict=True)), src
    # e's egress is closed: it reaches nobody, but everybody reaches e (the replies are established traffic)
    assert not any(lab.probe("y/e", [(d, "tcp", "80") for d in ("x/b", "y/c", "x/d")]).values())
    for src in ("x/b", "y/c", "x/d"):
        assert lab.probe(src, [("y/e", "tcp", "80"), ("y/e", "udp", "80")]) == {
            ("y/e", "tcp", "80"): True, ("y/e", "udp", "80"): src != "x/b"}


def test_policy_changes_while_traffic_flows(lab):
    """The controller's loop reloads its table on every change; traffic between pods the changes do not
    concern never notices (no lost request, the long connection never breaks), and the changed pair
    follows each version of the policy within a moment."""
    lab.write_state()
    ctl = {node: subprocess.Popen(lab.netpol_argv(node, "--debounce", "0.01"), stderr=subprocess.PIPE, text=True)
           for node in ("n1", "n2")}
    lab.procs += ctl.values()
    t0 = time.monotonic()
    for node in ("n1", "n2"):  # both controllers have loaded their first table
        while in_ns(lab.node_ns[node], "nft", "list", "table", "inet", "pycni-netpol", check=False).returncode:
            assert time.monotonic() - t0 < 60, "no table loaded"
            time.sleep(0.1)
    ip = {k: v["ip"] for k, v in lab.pods.items()}
    streamer = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{lab.pods['y/c']['netns']}", "--", sys.executable,
                                 PROBE, "stream", "12", f"tcp:{ip['x/a']}:80", f"udp:{ip['x/a']}:80",
                                 f"tcp:{ip['x/d']}:80", f"udp:{ip['y/e']}:81"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(streamer)
    seen = []
    deadline = time.monotonic() + 10
    i = 0
    while time.monotonic() < deadline or len(seen) < 4:
        # toggle a policy isolating x/b (ingress from x/b's own namespace only): y/c's traffic to a, d, e is
        # untouched, y/c -> x/b flips with every version
        if i % 2 == 0:
            lab.policy("x", "b-in", {"podSelector": {"matchLabels": {"pod": "b"}},
                                     "ingress": [{"from": [{"podSelector": {}}]}]})
        else:
            lab.policies.pop("x/b-in", None)
        lab.write_state()
        want = i % 2 == 1
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:  # generous: other tests may load this machine
            got = lab.probe("y/c", [("x/b", "tcp", "80")], timeout=0.3)[("x/b", "tcp", "80")]
            if got == want:
                break
        seen.append((want, got, round(time.monotonic() - t0, 2)))
        i += 1
    out, _ = streamer.communicate(timeout=30)
    result = json.loads(out)
    assert all(want == got for want, got, _ in seen), seen
    assert len(seen) >= 4, seen
    assert result["failed"] == [] and result["ok"] > 50, result
    for p in ctl.values():
        p.send_signal(signal.SIGTERM)
    for node, p in ctl.items():
        assert p.wait(timeout=10) == 0
        log = p.stderr.read()
        loads = log.count("loaded table inet pycni-netpol")
        # n1 hosts x/b and reloads for each version; nothing changes for n2's pods, so it never reloads
        assert (loads >= len(seen) // 2) if node == "n1" else (loads == 1), log
        # the table stays when the controller stops
        assert in_ns(lab.node_ns[node], "nft", "list", "table", "inet", "pycni-netpol", check=False).returncode == 0


def test_drift_repaired_and_cleanup(lab):
    lab.policy("x", "deny-in", {"podSelector": {}})
    lab.write_state()
    n1 = lab.node_ns["n1"]
    ctl = subprocess.Popen(lab.netpol_argv("n1", "--resync", "0.3"), stderr=subprocess.PIPE, text=True)
    lab.procs.append(ctl)
    deadline = time.monotonic() + 60  # generous: other tests may load this machine
    while in_ns(n1, "nft", "list", "table", "inet", "pycni-netpol", check=False).returncode and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert lab.probe("y/c", [("x/a", "tcp", "80")]) == {("x/a", "tcp", "80"): False}
    in_ns(n1, "nft", "flush", "table", "inet", "pycni-netpol")       # someone flushes our table
    while "vmap" not in in_ns(n1, "nft", "list", "table", "inet", "pycni-netpol").stdout and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert lab.probe("y/c", [("x/a", "tcp", "80")]) == {("x/a", "tcp", "80"): False}
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(timeout=10) == 0
    assert "repaired drift" in ctl.stderr.read()
    proc = subprocess.run(lab.netpol_argv("n1", "--cleanup"), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert in_ns(n1, "nft", "list", "table", "inet", "pycni-netpol", check=False).returncode != 0
    assert lab.probe("y/c", [("x/a", "tcp", "80")]) == {("x/a", "tcp", "80"): True}


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl for the fake API server's certificate")
def test_kube_mode_list_watch_enforce(lab, capsys):
    """`pycni netpol --kube` for real HTTP: a fake API server (TLS, bearer token; tests/support/agent_fake_api.py) in
    node n1's namespace serves LIST and streaming WATCH of pods, namespaces and policies from the lab's
    state; a policy created, a pod relabelled and the policy deleted through it reach the kernel. Prints the
    time from each change to its enforcement (docs/networkpolicy.md)."""
    sa, key = service_account_dir(lab.tmp)
    lab.write_state()
    n1 = lab.node_ns["n1"]
    port = "16444"
    server = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{n1}", "--", sys.executable,
                               str(SUPPORT / "agent_fake_api.py"), port, str(lab.state),
                               str(sa / "ca.crt"), str(key), str(sa / "token")],
                              stdout=subprocess.PIPE, text=True)
    lab.procs.append(server)
    assert server.stdout.readline().strip() == "ready"
    env = {"PATH": os.environ["PATH"], "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    ctl = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{n1}", "--", sys.executable, "-m",
                            "pycni.agent.netpol_main", "--node-name", "n1", "--kube", "--kube-sa-dir", str(sa)],
                           env=env, stderr=subprocess.PIPE, text=True)
    lab.procs.append(ctl)

    def until(cond, what: str) -> float:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < 30, f"not enforced within 30 s: {what}"
            time.sleep(0.02)
        return time.monotonic() - t0

    def table() -> str:
        return in_ns(n1, "nft", "list", "table", "inet", "pycni-netpol", check=False).stdout

    until(lambda: "chain ingress" in table(), "first load")
    c_to_a = [("x/a", "tcp", "80")]
    assert lab.probe("y/c", c_to_a) == {c_to_a[0]: True}
    timings = {}
    lab.policy("x", "a-in", {"podSelector": {"matchLabels": {"pod": "a"}},
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    lab.write_state()
    timings["policy created -> table"] = until(lambda: "x/a-in" in table(), "policy created")
    assert lab.probe("y/c", c_to_a) == {c_to_a[0]: False}
    assert lab.probe("x/b", c_to_a) == {c_to_a[0]: True}
    lab.relabel_pod("x/b", {"pod": "b2"})                            # b loses the label the policy allows
    lab.write_state()
    b_ip = lab.pods["x/b"]["ip"]
    timings["pod relabelled -> table"] = until(lambda: b_ip not in table(), "pod relabelled")
    assert lab.probe("x/b", c_to_a) == {c_to_a[0]: False}
    del lab.policies["x/a-in"]
    lab.write_state()
    timings["policy deleted -> table"] = until(lambda: "x/a-in" not in table(), "policy deleted")
    assert lab.probe("y/c", c_to_a) == {c_to_a[0]: True}
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(timeout=10) == 0
    log = ctl.stderr.read()
    assert "enforced" in log and "ERROR" not in log, log
    with capsys.disabled():
        print("\n  netpol --kube: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
