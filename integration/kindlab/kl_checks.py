"""The cluster checks, written once, run against two back ends (stdlib only, so kind's run-e2e.sh can
use it without a venv):

* `kl_local.LocalCluster` - docker node containers in a dedicated namespace, pods over each node's CRI;
* `kl_kube.KubectlCluster` - a real (kind) cluster through kubectl.

A back end implements the small `Cluster` interface below. Every test pod runs the same busybox
command: an httpd on port 8080 whose /cgi-bin/whoami answers the client's address as the pod saw
it (REMOTE_ADDR) - which tells NAT from no NAT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from harness.wait import retry

HTTP_PORT = 8080
HOST_PORT = 18080
# One shell line so a plain busybox image works on both back ends (kind pulls docker.io busybox).
POD_COMMAND = [
    "sh", "-c",
    ("mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' "
     "> /www/cgi-bin/whoami && chmod 755 /www/cgi-bin/whoami && echo hello > /www/index.html && "
     f"exec httpd -f -p {HTTP_PORT} -h /www"),
]


@dataclass
class Pod:
    name: str
    node: str
    ip: str
    handle: dict = field(default_factory=dict)  # back-end specific (sandbox/container ids, k8s name)


class Cluster(Protocol):
    name: str
    namespace: str  # where the test pods and Services live
    supports: frozenset[str]  # optional checks: "service", "dns"

    def nodes(self) -> list[str]: ...
    def node_ip(self, node: str) -> str: ...
    def run_pod(self, name: str, node: str, host_port: int = 0) -> Pod: ...
    def exec(self, pod: Pod, argv: list[str], timeout: float = 15) -> tuple[int, str]: ...
    def delete_pod(self, pod: Pod) -> None: ...
    def leases(self, node: str) -> list[str]: ...          # IP files in the pycni network's IPAM dir
    def service(self, name: str, pod: Pod, port: int) -> str: ...   # ClusterIP (if "service")
    def delete_service(self, name: str) -> None: ...


class CheckFailed(AssertionError):
    pass


def retry_check(fn, what: str, timeout: float = 20.0, interval: float = 0.5):
    """fn() until it stops raising CheckFailed (harness.wait.retry); CheckFailed at the deadline."""
    return retry(fn, what, timeout=timeout, interval=interval, retry_on=(CheckFailed,), fail=CheckFailed)


def ping(cluster: Cluster, pod: Pod, ip: str, timeout: float = 10.0) -> None:
    def once():
        rc, out = cluster.exec(pod, ["ping", "-c", "2", "-W", "2", ip])
        if rc != 0:
            raise CheckFailed(f"ping {pod.name}({pod.node}) -> {ip}: rc={rc} {out.strip()[-300:]}")
    retry_check(once, f"ping from {pod.name} to {ip}", timeout=timeout)


def http_get(cluster: Cluster, pod: Pod, host: str, port: int, path: str, timeout: float = 20.0) -> str:
    """The body of GET http://host:port/path, with busybox nc (Debian's static busybox wget crashes in
    an image without glibc's NSS modules; nc needs nothing)."""
    script = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"

    def once():
        rc, out = cluster.exec(pod, ["sh", "-c", script])
        head, sep, body = out.replace("\r\n", "\n").partition("\n\n")
        if rc != 0 or not sep or " 200 " not in head.splitlines()[0]:
            raise CheckFailed(f"GET http://{host}:{port}{path} from {pod.name}({pod.node}): rc={rc} {out.strip()[-300:]}")
        return body.strip()
    return retry_check(once, f"GET http://{host}:{port}{path} from {pod.name}", timeout=timeout)


def whoami(cluster: Cluster, pod: Pod, host: str, port: int = HTTP_PORT) -> str:
    """The client address the server saw (httpd listens on IPv6 too: "[::ffff:a.b.c.d]" -> a.b.c.d)."""
    body = http_get(cluster, pod, host, port, "/cgi-bin/whoami")
    addr = body.splitlines()[-1].strip().strip("[]") if body else ""
    return addr.removeprefix("::ffff:")


# -- the checks ---------------------------------------------------------------------------------------------


def check_same_node(cluster: Cluster, pods: dict[str, Pod]) -> None:
    a, b = pods["a1"], pods["a2"]
    assert a.node == b.node
    ping(cluster, a, b.ip)
    ping(cluster, b, a.ip)
    got = whoami(cluster, a, b.ip)
    if got != a.ip:
        raise CheckFailed(f"same-node HTTP: server saw {got}, expected the client pod {a.ip}")


def check_cross_node(cluster: Cluster, pods: dict[str, Pod]) -> None:
    a, b, c = pods["a1"], pods["b1"], pods.get("c1")
    for x, y in [(a, b), (b, a)] + ([(a, c), (c, b)] if c else []):
        assert x.node != y.node
        ping(cluster, x, y.ip)
    got = whoami(cluster, a, b.ip)  # pod -> pod across nodes keeps its source address (no NAT)
    if got != a.ip:
        raise CheckFailed(f"cross-node HTTP: server saw {got}, expected the client pod {a.ip} (no NAT)")


def check_host_port(cluster: Cluster, pods: dict[str, Pod]) -> None:
    """A hostPort on node B reached from a pod on node A at B's address; the request leaves the
    cluster CIDR (a node address), so the agent masquerades it: the server sees node A's address."""
    client, server = pods["a1"], pods["hp"]
    target = cluster.node_ip(server.node)
    got = whoami(cluster, client, target, HOST_PORT)
    allowed = {cluster.node_ip(client.node)}
    if got not in allowed:
        raise CheckFailed(f"hostPort: server saw {got}, expected node {client.node}'s address {allowed} "
                          "(egress to a non-cluster address is masqueraded)")


def check_service(cluster: Cluster, pods: dict[str, Pod]) -> None:
    ip = cluster.service("pycni-e2e-svc", pods["b1"], HTTP_PORT)
    try:
        body = http_get(cluster, pods["a1"], ip, HTTP_PORT, "/index.html", timeout=60)
        if "hello" not in body:
            raise CheckFailed(f"ClusterIP {ip}: unexpected body {body!r}")
    finally:
        cluster.delete_service("pycni-e2e-svc")


def resolve(cluster: Cluster, pod: Pod, name: str) -> list[str]:
    """The addresses busybox `nslookup NAME` prints for NAME's answer (the lines after "Name:"), not the
    "Server:"/"Address:" header that names the DNS server itself."""
    rc, out = cluster.exec(pod, ["nslookup", name])
    if rc != 0:
        raise CheckFailed(f"nslookup {name} in {pod.name}: rc={rc} {out.strip()[-300:]}")
    answer = out.split("Name:", 1)[1] if "Name:" in out else ""
    return [line.split(":", 1)[1].strip() for line in answer.splitlines() if line.strip().startswith("Address")]


def check_dns(cluster: Cluster, pods: dict[str, Pod]) -> None:
    """A pod resolves a Service's name through the cluster DNS to exactly that Service's ClusterIP."""
    ip = cluster.service("pycni-e2e-dns", pods["b1"], HTTP_PORT)
    name = f"pycni-e2e-dns.{cluster.namespace}.svc.cluster.local"
    try:
        def once():
            got = resolve(cluster, pods["a1"], name)
            if got != [ip]:
                raise CheckFailed(f"{name} resolved to {got}, expected the ClusterIP [{ip}]")
        retry_check(once, "DNS", timeout=60, interval=2)
    finally:
        cluster.delete_service("pycni-e2e-dns")


def start_pods(cluster: Cluster) -> dict[str, Pod]:
    n = cluster.nodes()
    if len(n) < 2:
        raise CheckFailed(f"need at least two nodes with pods, have {n}")
    pods = {
        "a1": cluster.run_pod("pycni-a1", n[0]),
        "a2": cluster.run_pod("pycni-a2", n[0]),
        "b1": cluster.run_pod("pycni-b1", n[1]),
        "hp": cluster.run_pod("pycni-hp", n[1], host_port=HOST_PORT),
    }
    if len(n) > 2:
        pods["c1"] = cluster.run_pod("pycni-c1", n[2])
    return pods


def check_cleanup(cluster: Cluster, pods: dict[str, Pod]) -> None:
    """Deleting the pods leaves none of *their* leases on any node (CNI DEL reached pycni-host-local).
    Other pods' leases (CoreDNS, a storage provisioner, the next test) are not counted."""
    ours = {p.ip for p in pods.values()}
    for pod in pods.values():
        cluster.delete_pod(pod)

    def once():
        left = {node: sorted(ours & set(cluster.leases(node))) for node in cluster.nodes()}
        left = {k: v for k, v in left.items() if v}
        if left:
            raise CheckFailed(f"leases of the deleted pods left: {left}")
    retry_check(once, "leases released", timeout=60, interval=1)


CHECKS = [("same-node pod<->pod", check_same_node), ("cross-node pod<->pod", check_cross_node),
          ("hostPort", check_host_port), ("ClusterIP Service", check_service), ("DNS", check_dns)]


def run_all(cluster: Cluster, report=print) -> list[str]:
    """Every check (those the back end supports), then cleanup. Returns the failures."""
    failures = []
    t0 = time.monotonic()
    pods = start_pods(cluster)
    report(f"pods: {', '.join(f'{p.name}@{p.node}={p.ip}' for p in pods.values())} "
           f"({time.monotonic() - t0:.1f}s)")
    for title, fn in CHECKS:
        key = {"ClusterIP Service": "service", "DNS": "dns"}.get(title)
        if key and key not in cluster.supports:
            report(f"SKIP {title} (the {cluster.name} back end has no {key})")
            continue
        t = time.monotonic()
        try:
            fn(cluster, pods)
            report(f"PASS {title} ({time.monotonic() - t:.1f}s)")
        except (CheckFailed, AssertionError) as exc:
            failures.append(f"{title}: {exc}")
            report(f"FAIL {title}: {exc}")
    try:
        check_cleanup(cluster, pods)
        report("PASS no lease left after deleting the pods")
    except CheckFailed as exc:
        failures.append(f"cleanup: {exc}")
        report(f"FAIL cleanup: {exc}")
    return failures
