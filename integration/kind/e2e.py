#!/usr/bin/env python3
"""pycni on a real kind cluster, end to end, through the real chain: kubelet -> containerd CRI -> libcni -> pycni.

    python3 integration/kind/e2e.py [--namespace pycni-e2e] [--image pycni/e2e:1] [--update-image IMG] [--only NAME...]

Needs kubectl and docker on PATH pointing at the cluster (`. build/cluster.env`) and the nodes as docker
containers named after their Kubernetes nodes (kind's naming). Stdlib only. The checks, in order:

  agent-state                       every agent pod Ready; the bundle, the conflist, routes and nft on every node
  native-shim                       every node's /opt/cni/bin/pycni (and pycni-host-local) is the bundle's static
                                    native shim, and the pods' ADDs reached the node's daemon through it
  same-node / cross-node pod<->pod  ping + HTTP; the server sees the client pod's own address (no NAT)
  hostPort                          a pod's hostPort on another node's address answers
  services                          a ClusterIP Service answers from a pod on every node and from every node;
                                    a NodePort Service answers on every node's address from every node
  dns                               a pod resolves the Service's name through CoreDNS to its ClusterIP
  rolling-update                    the pycni DaemonSet rolled to an image with another bundle while pods talk
                                    (same node, across nodes, through a Service): no request fails, and
                                    pods created during the update start and answer
  reboot                            a worker's container restarted: its pods come back with working networking,
                                    and no lease on that node belongs to a sandbox the runtime no longer has
  cleanup                           deleting the test pods leaves none of their leases, veths or firewall rules
                                    on any node (other pods' leases are not counted)

Exit status 0 when every check passed. Every pod and Service lives in the test namespace, deleted at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shlex
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "kindlab"), os.path.dirname(HERE)]  # kl_* and the harness

from harness.processes import run
from harness.wait import wait_for
from kl_checks import (
    HTTP_PORT,
    CheckFailed,
    Pod,
    check_cross_node,
    check_dns,
    check_host_port,
    check_same_node,
    http_get,
    ping,
    retry_check,
    start_pods,
    whoami,
)
from kl_kube import KubectlCluster

NETWORK = "pycni"
LEASE_DIR = f"/var/lib/cni/networks/{NETWORK}"
REBOOT_CONVERGENCE = 60.0  # seconds from "pods Ready on the restarted node" to cross-node traffic (logged)


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def host_veth_name(container_id: str, ifname: str = "eth0") -> str:
    """pycni's host-side veth name (pycni.bridge.verbs.host_veth_name; copied: this script runs without pycni)."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


class Kind(KubectlCluster):
    """KubectlCluster plus what only a kind cluster offers: a shell on each node (docker exec)."""

    name = "kind"

    def node_sh(self, node: str, script: str, timeout: float = 60, check: bool = True) -> str:
        proc = run([self.docker, "exec", node, "bash", "-c", script], timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise CheckFailed(f"{node}: {script[:80]!r}: rc={proc.returncode} {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def node_get(self, node: str, host: str, port: int, path: str = "/index.html") -> str:
        """GET from a node's own network namespace (bash's /dev/tcp: nothing else needed on the node)."""
        script = (f"exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && "
                  f"timeout 5 cat <&3")
        return self.node_sh(node, f"timeout 10 bash -c {shlex.quote(script)}", check=False)

    def sandboxes(self, node: str) -> list[dict]:
        """Every pod sandbox the node's runtime knows (CRI ListPodSandbox through crictl): id, state, name."""
        out = self.node_sh(node, "crictl pods -o json")
        return [{"id": s["id"], "state": s["state"], "name": s["metadata"]["name"],
                 "namespace": s["metadata"]["namespace"]} for s in json.loads(out).get("items") or []]

    def lease_owners(self, node: str) -> dict[str, str]:
        """{ip: container id} of every lease of the pycni network on a node."""
        out = self.node_sh(node, f"cd {LEASE_DIR} 2>/dev/null || exit 0; for f in *; do "
                                 f"case $f in lock|last_reserved_ip.*|'*') continue;; esac; "
                                 "printf '%s %s\\n' \"$f\" \"$(head -n1 \"$f\" | tr -d '\\r')\"; done")
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def pod_ip(self, name: str) -> str:
        return self.kubectl("get", "pod", "-n", self.namespace, name, "-o", "jsonpath={.status.podIP}").stdout.strip()

    def node_port_service(self, name: str, pod: Pod, port: int) -> int:
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": self.namespace},
               "spec": {"type": "NodePort", "selector": {"app": pod.name},
                        "ports": [{"port": port, "targetPort": port}]}}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(svc))
        return int(self.kubectl("get", "service", "-n", self.namespace, name, "-o",
                                "jsonpath={.spec.ports[0].nodePort}").stdout.strip())


# -- the agent's work on every node -----------------------------------------------------------------------------


def check_agent_state(k: Kind, pods: dict[str, Pod]) -> None:
    """Every node: the DaemonSet pod Ready, the bundle in /opt/cni/bin, the conflist, a proto-156 route to each
    other node's pod CIDR, the masquerade table; the conflist is the one the runtime uses (the node is Ready)."""
    nodes = k.nodes()
    not_ready = [n for n, p in agent_pods(k).items()
                 if not all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]
    if not_ready:
        raise CheckFailed(f"pycni agent pods not Ready: {not_ready}")
    for node in nodes:
        out = k.node_sh(node, "test -x /opt/cni/bin/pycni && test -x /opt/cni/bin/pycni-host-local && "
                              "cat /opt/cni/bin/pycni.d/.bundle-digest && cat /etc/cni/net.d/10-pycni.conflist && "
                              "ip route show proto 156 && nft list table inet pycni-agent >/dev/null && echo nft-ok")
        routes = [line for line in out.splitlines() if line.split(" ", 1)[0].count("/") == 1 and " via " in line]
        if len(routes) != len(nodes) - 1 or "nft-ok" not in out:
            raise CheckFailed(f"{node}: expected {len(nodes) - 1} pycni routes and the nft table, got:\n{out}")


def elf_is_static(head: bytes) -> bool:
    """The first bytes of a file (its program headers included) are those of a 64-bit little-endian ELF
    executable with no PT_INTERP: it needs no loader and no libc of the node."""
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    if phoff + phentsize * phnum > len(head):
        return False
    return all(struct.unpack_from("<I", head, phoff + i * phentsize)[0] != 3 for i in range(phnum))  # 3 = PT_INTERP


def check_native_shim(k: Kind, pods: dict[str, Pod]) -> None:
    """Every node's /opt/cni/bin/pycni and pycni-host-local are the bundle's static native shim (what the
    agent installs from the DaemonSet image), and the pods' ADDs went through it to the node's daemon."""
    for node in k.nodes():
        out = k.node_sh(node, "head -c 4096 /opt/cni/bin/pycni | base64 -w0; echo; "
                              "[ \"$(sha256sum </opt/cni/bin/pycni)\" = \"$(sha256sum </opt/cni/bin/pycni-host-local)\" ] "
                              "&& echo same")
        head, _, rest = out.partition("\n")
        if not elf_is_static(base64.b64decode(head)):
            raise CheckFailed(f"{node}: /opt/cni/bin/pycni is not a static ELF executable (the native shim)")
        if rest.strip() != "same":
            raise CheckFailed(f"{node}: pycni and pycni-host-local differ")
    pod_nodes = {p.node for p in pods.values()}
    for name, agent in agent_pods(k).items():
        if agent["spec"].get("nodeName") not in pod_nodes:
            continue
        logs = k.kubectl("logs", "-n", "kube-system", name, "-c", "daemon").stdout
        if not any(" ADD " in line and ": exit 0 " in line for line in logs.splitlines()):
            raise CheckFailed(f"{name}: its daemon logged no ADD (the shim did not hand the pods' requests over):\n"
                              f"{logs[-1500:]}")


# -- Services ---------------------------------------------------------------------------------------------------


def check_services(k: Kind, pods: dict[str, Pod]) -> None:
    backend = pods["b1"]
    ip = k.service("pycni-e2e-web", backend, HTTP_PORT)
    node_port = k.node_port_service("pycni-e2e-np", backend, HTTP_PORT)
    try:
        clients = [p for key, p in pods.items() if key in ("a1", "b1", "c1")]
        for pod in clients:  # from a pod on every node (b1 reaches itself through the Service: hairpin)
            body = http_get(k, pod, ip, HTTP_PORT, "/index.html", timeout=90)
            if "hello" not in body:
                raise CheckFailed(f"ClusterIP {ip} from {pod.name}: {body!r}")
        for node in k.nodes():  # from every node's own network namespace
            targets = [(ip, HTTP_PORT, "ClusterIP")] + [(k.node_ip(n), node_port, f"NodePort on {n}")
                                                         for n in k.nodes()]
            for host, port, what in targets:
                def once(host=host, port=port, what=what, node=node):
                    out = k.node_get(node, host, port)
                    if " 200 " not in out.split("\n", 1)[0] or "hello" not in out:
                        raise CheckFailed(f"{what} {host}:{port} from node {node}: {out.strip()[-200:]!r}")
                retry_check(once, f"{what} from {node}", timeout=60, interval=1)
    finally:
        k.delete_service("pycni-e2e-web")
        k.delete_service("pycni-e2e-np")


# -- rolling update of the DaemonSet ---------------------------------------------------------------------------

PROBE_LOOP = ("rm -f /tmp/stop /tmp/probe.log; n=0; while [ ! -f /tmp/stop ]; do n=$((n+1)); for t in {targets}; do "
              "if printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${{t%:*}} ${{t#*:}} 2>/dev/null "
              "| grep -q hello; then echo \"ok $t\"; else echo \"FAIL $n $t $(date +%T)\"; fi; done; sleep 0.3; "
              "done > /tmp/probe.log 2>&1; echo done >> /tmp/probe.log")


def agent_pods(k: Kind) -> dict[str, dict]:
    doc = json.loads(k.kubectl("get", "pods", "-n", "kube-system", "-l", "app=pycni-agent", "-o", "json").stdout)
    return {p["metadata"]["name"]: p for p in doc["items"]}


def check_rolling_update(k: Kind, pods: dict[str, Pod], image: str) -> None:
    a1, a2, b1 = pods["a1"], pods["a2"], pods["b1"]
    svc_ip = k.service("pycni-e2e-roll", b1, HTTP_PORT)
    targets = f"{a2.ip}:{HTTP_PORT} {b1.ip}:{HTTP_PORT} {svc_ip}:{HTTP_PORT}"
    probers = [a1, b1]
    try:
        http_get(k, a1, svc_ip, HTTP_PORT, "/index.html", timeout=90)  # the Service works before we start
        for p in probers:
            # setsid: the exec's own session is killed when the exec ends
            k.kubectl("exec", "-n", k.namespace, p.name, "--", "sh", "-c",
                      f"setsid sh -c {shlex.quote(PROBE_LOOP.format(targets=targets))} </dev/null >/dev/null 2>&1 &")
        before = {n: p["spec"]["containers"][0]["image"] for n, p in agent_pods(k).items()}
        log(f"rolling the DaemonSet from {sorted(set(before.values()))} to {image}")
        k.kubectl("-n", "kube-system", "set", "image", "daemonset/pycni-agent", f"agent={image}", f"daemon={image}")
        # Pods created while the update runs: one per node, started as soon as the rollout is under way.
        new = {}
        with contextlib.suppress(CheckFailed):  # (after 60 s without a new agent pod, start them anyway)
            wait(lambda: any(p["spec"]["containers"][0]["image"] == image for p in agent_pods(k).values()),
                 "the rollout under way", 60, interval=0.5)
        for i, node in enumerate(k.nodes()):
            new[f"u{i}"] = pods[f"u{i}"] = k.run_pod(f"pycni-u{i}", node)  # in `pods`: cleanup deletes them
        k.kubectl("-n", "kube-system", "rollout", "status", "daemonset/pycni-agent", "--timeout=600s", timeout=620)
        after = agent_pods(k)
        stale = [n for n, p in after.items() if p["spec"]["containers"][0]["image"] != image]
        if stale:
            raise CheckFailed(f"agent pods still on the old image after the rollout: {stale}")
        for node in k.nodes():  # the new bundle is what each node now runs
            rev = k.node_sh(node, "cat /opt/cni/bin/pycni.d/REVISION 2>/dev/null || true").strip()
            if not rev:
                raise CheckFailed(f"{node}: the new bundle (with pycni.d/REVISION) is not installed")
        for p in probers:
            k.kubectl("exec", "-n", k.namespace, p.name, "--", "touch", "/tmp/stop")
        logs = {}
        for p in probers:
            def finished(p=p):
                out = k.kubectl("exec", "-n", k.namespace, p.name, "--", "cat", "/tmp/probe.log").stdout
                if "done" not in out:
                    raise CheckFailed("probe loop still running")
                return out
            logs[p.name] = retry_check(finished, f"probe loop in {p.name}", timeout=30)
        for name, out in logs.items():
            ok = sum(1 for line in out.splitlines() if line.startswith("ok "))
            fails = [line for line in out.splitlines() if line.startswith("FAIL")]
            log(f"  {name}: {ok} requests answered during the update, {len(fails)} failed")
            if fails or ok < 10:
                raise CheckFailed(f"{name} lost connectivity during the rolling update: {fails[:5]} (ok={ok})")
        for p in new.values():  # pods started during the update answer, across nodes, without NAT
            got = whoami(k, a1, p.ip)
            if got != a1.ip:
                raise CheckFailed(f"pod {p.name} started during the update: server saw {got}, expected {a1.ip}")
        log(f"  pods started during the update: {', '.join(f'{p.name}@{p.node}={p.ip}' for p in new.values())}")
    finally:
        k.delete_service("pycni-e2e-roll")


# -- a node reboots ----------------------------------------------------------------------------------------------


def wait(pred, what: str, timeout: float, interval: float = 2.0):
    """pred() until it returns something true; a failing command or a half-written answer counts as "not yet"."""
    return wait_for(pred, what, timeout=timeout, interval=interval, fail=CheckFailed,
                    retry_on=(CheckFailed, subprocess.SubprocessError, RuntimeError, ValueError, KeyError))


def check_reboot(k: Kind, pods: dict[str, Pod]) -> None:
    victim = pods["b1"].node
    on_victim = [p for p in pods.values() if p.node == victim]
    before = {p.name: [s["id"] for s in k.sandboxes(victim) if s["name"] == p.name and s["state"] == "SANDBOX_READY"]
              for p in on_victim}
    # A lease of a sandbox the runtime never had (what a runtime that lost its state leaves): only the agent's
    # sweep (CRI ListPodSandbox, then CNI DEL) can release it; 1 h old, so past the sweep's grace period.
    cidr = json.loads(k.kubectl("get", "node", victim, "-o", "json").stdout)["spec"]["podCIDR"]
    planted = cidr.rsplit(".", 1)[0] + ".250"
    ghost = hashlib.sha256(f"pycni-e2e-ghost-{time.time()}".encode()).hexdigest()
    k.node_sh(victim, f"printf '%s\\r\\neth0' {ghost} > {LEASE_DIR}/{planted} && touch -d '-1 hour' {LEASE_DIR}/{planted}")
    log(f"restarting node container {victim} (pods {', '.join(p.name for p in on_victim)}; "
        f"planted a lease {planted} of an unknown sandbox {ghost[:12]})")
    subprocess.run([k.docker, "restart", "-t", "10", victim], check=True, capture_output=True, timeout=180)

    def node_ready():
        doc = json.loads(k.kubectl("get", "node", victim, "-o", "json").stdout)
        cond = {c["type"]: c["status"] for c in doc["status"]["conditions"]}
        return cond.get("Ready") == "True"
    wait(node_ready, f"node {victim} Ready after the restart", 300)

    def pycni_ready():  # the node's pycni pod Ready: its agent finished a round (bundle, routes, masquerade,
        doc = json.loads(k.kubectl("-n", "kube-system", "get", "pods", "-l", "app=pycni-agent",  # conflist)
                                   "--field-selector", f"spec.nodeName={victim}", "-o", "json").stdout)
        return any(not p["metadata"].get("deletionTimestamp")
                   and all(c.get("ready") for c in p["status"].get("containerStatuses", [{}])) for p in doc["items"])
    wait(pycni_ready, f"pycni Ready again on {victim} (routes to the other nodes back)", 300)

    def pods_back():  # each pod on a new sandbox, Ready, with an address
        now = {s["name"]: s["id"] for s in k.sandboxes(victim) if s["state"] == "SANDBOX_READY"}
        for p in on_victim:
            if now.get(p.name) in (None, *before[p.name]):
                return False
            ready = k.kubectl("get", "pod", "-n", k.namespace, p.name, "-o",
                              "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout.strip()
            if ready != "True":
                return False
        return True
    wait(pods_back, f"pods on {victim} running again on new sandboxes", 300)
    for p in on_victim:
        p.ip = k.pod_ip(p.name)
    log(f"  back: {', '.join(f'{p.name}={p.ip}' for p in on_victim)}")
    a1 = pods["a1"]
    t0 = time.monotonic()
    for p in on_victim:
        # Ready pods are not yet a converged network (the restarted node's address may change, and the other
        # nodes' agents follow it on their next round): it must come back, within REBOOT_CONVERGENCE.
        ping(k, a1, p.ip, timeout=REBOOT_CONVERGENCE)
        log(f"  {a1.name} -> {p.name} answers {time.monotonic() - t0:.0f}s after the pods were back")
        got = whoami(k, a1, p.ip)
        if got != a1.ip:
            raise CheckFailed(f"after the reboot {p.name} saw {got}, expected {a1.ip} (no NAT)")
        ping(k, p, a1.ip)
    check_host_port(k, pods)

    def no_dead_leases():  # every lease on the node belongs to a sandbox the runtime still runs
        live = {s["id"] for s in k.sandboxes(victim) if s["state"] == "SANDBOX_READY"}
        dead = {ip: cid[:12] for ip, cid in k.lease_owners(victim).items() if cid not in live}
        if dead:
            raise CheckFailed(f"leases of dead sandboxes on {victim}: {dead}")
        return True
    wait(no_dead_leases, f"no lease of a dead sandbox on {victim}", 300, interval=5)


# -- cleanup -----------------------------------------------------------------------------------------------------


def check_cleanup(k: Kind, pods: dict[str, Pod]) -> None:
    ours: dict[str, set[str]] = {}  # node -> sandbox ids of the test pods (every attempt, dead ones too)
    for node in k.nodes():
        ours[node] = {s["id"] for s in k.sandboxes(node) if s["namespace"] == k.namespace}
    ips = {p.ip for p in pods.values()}
    for p in pods.values():
        k.delete_pod(p)
    # and whatever else a failed check left in the namespace
    k.kubectl("delete", "pods", "--all", "-n", k.namespace, "--wait=true", "--timeout=120s", check=False, timeout=150)

    def clean():
        problems = []
        for node, ids in ours.items():
            leases = {ip: cid for ip, cid in k.lease_owners(node).items() if cid in ids or ip in ips}
            if leases:
                problems.append(f"{node}: leases {leases}")
            links = set(k.node_sh(node, "ls /sys/class/net").split())
            veths = sorted(links & {host_veth_name(i) for i in ids})
            if veths:
                problems.append(f"{node}: veths {veths}")
            rules = k.node_sh(node, "iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; nft list ruleset 2>/dev/null",
                              check=False)
            hits = sorted({i[:12] for i in ids if i in rules})
            if hits:
                problems.append(f"{node}: firewall rules naming sandboxes {hits}")
            left = {s["id"][:12] for s in k.sandboxes(node) if s["id"] in ids}
            if left:
                problems.append(f"{node}: sandboxes {sorted(left)}")
        if problems:
            raise CheckFailed("; ".join(problems))
    retry_check(clean, "the deleted pods' leases, veths, rules and sandboxes gone", timeout=180, interval=3)


# -- main --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", default="pycni-e2e")
    p.add_argument("--image", default=os.environ.get("PYCNI_E2E_IMAGE", "pycni/e2e:1"))
    p.add_argument("--update-image", default=os.environ.get("PYCNI_UPDATE_IMAGE", ""),
                   help="the DaemonSet image to roll to (already loaded into the nodes); no rolling update without")
    p.add_argument("--only", nargs="*", default=[], help="run only these checks (cleanup always runs)")
    args = p.parse_args(argv)
    k = Kind(namespace=args.namespace, image=args.image)
    k.teardown()
    k.setup()
    t0 = time.monotonic()
    failures: list[str] = []
    checks = [
        ("agent-state", lambda pods: check_agent_state(k, pods)),
        ("native-shim", lambda pods: check_native_shim(k, pods)),
        ("same-node", lambda pods: check_same_node(k, pods)),
        ("cross-node", lambda pods: check_cross_node(k, pods)),
        ("hostPort", lambda pods: check_host_port(k, pods)),
        ("services", lambda pods: check_services(k, pods)),
        ("dns", lambda pods: check_dns(k, pods)),
        ("rolling-update", lambda pods: check_rolling_update(k, pods, args.update_image)),
        ("reboot", lambda pods: check_reboot(k, pods)),
    ]
    try:
        pods = start_pods(k)
        log(f"pods: {', '.join(f'{q.name}@{q.node}={q.ip}' for q in pods.values())} ({time.monotonic() - t0:.0f}s)")
        for title, fn in checks:
            if args.only and title not in args.only:
                continue
            if title == "rolling-update" and not args.update_image:
                failures.append(f"{title}: no --update-image given")
                log(f"FAIL {title}: no --update-image given")
                continue
            t = time.monotonic()
            try:
                fn(pods)
                log(f"PASS {title} ({time.monotonic() - t:.0f}s)")
            except (CheckFailed, AssertionError, RuntimeError, subprocess.SubprocessError) as exc:
                failures.append(f"{title}: {exc}")
                log(f"FAIL {title}: {exc}")
        t = time.monotonic()
        try:
            check_cleanup(k, pods)
            log(f"PASS cleanup ({time.monotonic() - t:.0f}s)")
        except (CheckFailed, RuntimeError, subprocess.SubprocessError) as exc:
            failures.append(f"cleanup: {exc}")
            log(f"FAIL cleanup: {exc}")
    finally:
        k.teardown()
    log(f"{'OK' if not failures else f'{len(failures)} FAILED'} in {time.monotonic() - t0:.0f}s")
    for f in failures:
        log(f"  {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
