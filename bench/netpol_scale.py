#!/usr/bin/env python3
"""What NetworkPolicy costs on a node, measured (docs/networkpolicy.md "Cost"):

    sudo .venv/bin/python bench/netpol_scale.py [--quick]

Synthetic clusters (N pods over 10 nodes, namespaces of 20 pods, P policies: a third default-deny,
a third podSelector+namespaceSelector with two ports, a third ipBlock+named port egress) are compiled
for one node (the pure compiler: seconds, rules, set elements) and loaded with `nft -f` into a network
namespace created here and deleted at the end (the kernel's time to swap the table). Per packet, the kernel
does one hash lookup per direction (vmap) and then the chains of the policies selecting the pod.
Results: a table on stdout and build/bench/netpol.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pycni.agent import nft
from pycni.agent.netpol_compile import FAMILY, TABLE, Snapshot, compile_node
from pycni.agent.netpol_model import Namespace, NetworkPolicy, Pod

NODES = 10


def cluster(n_pods: int, n_policies: int) -> Snapshot:
    pods, nss, pols = [], [], []
    n_ns = max(1, n_pods // 20)
    for i in range(n_ns):
        nss.append(Namespace.from_api({"metadata": {"name": f"ns{i}", "labels": {"team": f"t{i % 5}"}}}))
    for i in range(n_pods):
        node = i % NODES
        ip = f"10.{100 + node}.{(i // NODES) // 250}.{(i // NODES) % 250 + 2}"
        pods.append(Pod.from_api({
            "metadata": {"namespace": f"ns{i % n_ns}", "name": f"p{i}", "labels": {"app": f"a{i % 7}", "tier": f"t{i % 3}"}},
            "spec": {"nodeName": f"n{node}", "containers": [{"ports": [{"name": "http", "containerPort": 8000 + i % 5}]}]},
            "status": {"podIPs": [{"ip": ip}]}}))
    for j in range(n_policies):
        ns, kind = f"ns{j % n_ns}", j % 3
        if kind == 0:
            spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
        elif kind == 1:
            spec = {"podSelector": {"matchLabels": {"app": f"a{j % 7}"}}, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{j % 5}"}},
                           "podSelector": {"matchLabels": {"tier": f"t{j % 3}"}}}],
                 "ports": [{"port": 80}, {"protocol": "UDP", "port": 53}]}]}
        else:
            spec = {"podSelector": {"matchLabels": {"tier": f"t{j % 3}"}}, "policyTypes": ["Egress"], "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.{100 + j % NODES}.0.0/16"]}}]},
                {"ports": [{"port": "http"}]}]}
        pols.append(NetworkPolicy.from_api({"metadata": {"namespace": ns, "name": f"pol{j}"}, "spec": spec}))
    return Snapshot(tuple(pods), tuple(nss), tuple(pols))


def measure(n_pods: int, n_policies: int, netns: str) -> dict:
    snap = cluster(n_pods, n_policies)
    t0 = time.perf_counter()
    c = compile_node(snap, "n0")
    compile_s = time.perf_counter() - t0
    script = nft.Table(FAMILY, TABLE).script(c.body)
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", "nft", "-f", "-"], input=script,
                              text=True, capture_output=True, check=False)
        loads.append(time.perf_counter() - t0)
        if proc.returncode:
            raise SystemExit(f"nft -f failed: {proc.stderr[:500]}")
    return {"pods": n_pods, "policies": n_policies, "localPods": sum(1 for p in snap.pods if p.node_name == "n0"),
            "isolatedLocalPods": c.isolated_pods, "rules": c.rules, "elements": c.elements,
            "scriptKiB": round(len(script) / 1024), "compileMs": round(compile_s * 1000, 1),
            "loadMs": round(min(loads) * 1000, 1)}


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = [(100, 10), (1000, 100)] if quick else [(100, 10), (500, 50), (1000, 100), (2000, 200), (5000, 500)]
    netns = f"pycni-npbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        results = [measure(p, q, netns) for p, q in sizes]
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    cols = list(results[0])
    print(" ".join(f"{c:>17}" for c in cols))
    for r in results:
        print(" ".join(f"{r[c]:>17}" for c in cols))
    out = ROOT / "build" / "bench" / "netpol.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%FT%TZ", time.gmtime()), "cpus": os.cpu_count(),
                               "results": results}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
