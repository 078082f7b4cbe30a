#!/usr/bin/env python3
"""The kind back end: the same checks (kl_checks) against a real Kubernetes cluster through kubectl.

Stdlib only, so integration/kind/run-e2e.sh runs it with any python3:

    python3 integration/kindlab/kl_kube.py [--context kind-pycni] [--namespace pycni-e2e] [--image busybox:1.36]

Pods are pinned to nodes with `nodeName` (workers first, then the control plane; a toleration for
everything), run busybox's httpd like the local back end, and are deleted with a 1 s grace period.
Leases are read with `docker exec <node> ls /var/lib/cni/networks/pycni` (kind nodes are docker
containers named after the node).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # kindlab/ and integration/ (the harness)

from harness.processes import run
from harness.wait import NotYet, retry
from kl_checks import HTTP_PORT, POD_COMMAND, Pod, run_all

NETWORK_NAME = "pycni"


class KubectlCluster:
    name = "kind (kubectl)"
    supports = frozenset({"service", "dns"})

    def __init__(self, context: str = "", namespace: str = "pycni-e2e", image: str = "busybox:1.36",
                 docker: str = "docker") -> None:
        self.context, self.namespace, self.image, self.docker = context, namespace, image, docker
        self._nodes: dict[str, str] | None = None

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 180
                ) -> subprocess.CompletedProcess:
        argv = ["kubectl"] + (["--context", self.context] if self.context else []) + list(args)
        return run(argv, input=stdin, timeout=timeout, check=check)

    def setup(self) -> None:
        self.kubectl("create", "namespace", self.namespace, check=False)

    def teardown(self) -> None:
        self.kubectl("delete", "namespace", self.namespace, "--wait=true", check=False, timeout=300)

    def _node_map(self) -> dict[str, str]:
        if self._nodes is None:
            doc = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)
            nodes = {}
            for item in doc["items"]:
                ip = next(a["address"] for a in item["status"]["addresses"] if a["type"] == "InternalIP")
                nodes[item["metadata"]["name"]] = ip
            self._nodes = nodes
        return self._nodes

    def nodes(self) -> list[str]:
        names = sorted(self._node_map())
        return [n for n in names if "control-plane" not in n] + [n for n in names if "control-plane" in n]

    def node_ip(self, node: str) -> str:
        return self._node_map()[node]

    def run_pod(self, name: str, node: str, host_port: int = 0) -> Pod:
        port = {"containerPort": HTTP_PORT, "protocol": "TCP"}
        if host_port:
            port["hostPort"] = host_port
        spec = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"app": name}},
            "spec": {
                "nodeName": node, "terminationGracePeriodSeconds": 1,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "app", "image": self.image, "imagePullPolicy": "IfNotPresent",
                                "command": POD_COMMAND, "ports": [port]}],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(spec))
        self.kubectl("wait", "-n", self.namespace, "--for=condition=Ready", f"pod/{name}", "--timeout=180s",
                     timeout=200)
        ip = self.kubectl("get", "pod", "-n", self.namespace, name, "-o", "jsonpath={.status.podIP}").stdout.strip()
        return Pod(name=name, node=node, ip=ip, handle={"k8s": name})

    def exec(self, pod: Pod, argv: list[str], timeout: float = 15) -> tuple[int, str]:
        proc = self.kubectl("exec", "-n", self.namespace, pod.name, "--", *argv, check=False, timeout=timeout + 30)
        return proc.returncode, proc.stdout + proc.stderr

    def delete_pod(self, pod: Pod) -> None:
        self.kubectl("delete", "pod", "-n", self.namespace, pod.name, "--wait=true", "--timeout=120s",
                     check=False, timeout=150)

    def leases(self, node: str) -> list[str]:
        proc = run([self.docker, "exec", node, "ls", f"/var/lib/cni/networks/{NETWORK_NAME}"], check=False, timeout=30)
        return [f for f in proc.stdout.split() if f != "lock" and not f.startswith("last_reserved_ip")]

    def service(self, name: str, pod: Pod, port: int) -> str:
        svc = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": self.namespace},
               "spec": {"selector": {"app": pod.name}, "ports": [{"port": port, "targetPort": port}]}}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(svc))
        def endpoint() -> None:
            ep = self.kubectl("get", "endpoints", "-n", self.namespace, name, "-o",
                              "jsonpath={.subsets[*].addresses[*].ip}", check=False).stdout.strip()
            if pod.ip not in ep.split():
                raise NotYet(f"endpoints {ep!r}")
        try:
            retry(endpoint, f"Service {name} endpoint {pod.ip}", timeout=60, interval=1)
        except TimeoutError:
            pass  # the callers' own checks (retried) say what fails
        return self.kubectl("get", "service", "-n", self.namespace, name, "-o",
                            "jsonpath={.spec.clusterIP}").stdout.strip()

    def delete_service(self, name: str) -> None:
        self.kubectl("delete", "service", "-n", self.namespace, name, "--wait=false", check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", default=os.environ.get("KUBE_CONTEXT", ""))
    p.add_argument("--namespace", default="pycni-e2e")
    p.add_argument("--image", default=os.environ.get("E2E_IMAGE", "busybox:1.36"))
    args = p.parse_args(argv)
    cluster = KubectlCluster(args.context, args.namespace, args.image)
    cluster.setup()
    t0 = time.monotonic()
    try:
        failures = run_all(cluster, report=lambda m: print(f"[e2e] {m}", flush=True))
    finally:
        cluster.teardown()
    print(f"[e2e] {'OK' if not failures else f'{len(failures)} FAILED'} in {time.monotonic() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
