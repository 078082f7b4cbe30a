"""End-to-end checks of pycni + its node agent on a kind-style cluster (marker `cluster`).

The checks themselves live in kl_checks (shared with kind's run-e2e.sh); each runs against every back
end the `cluster` fixture provides: the local docker-node cluster (always, as root) and a real kind
cluster (with PYCNI_KIND_CONTEXT). Tests run in file order and share one set of pods per back end.
"""

from __future__ import annotations

import json
import time

import harness.wait
import kl_checks
import pytest

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def pods(cluster):
    t0 = time.monotonic()
    pods = kl_checks.start_pods(cluster)
    print(f"pods up in {time.monotonic() - t0:.1f}s: " + ", ".join(f"{p.name}@{p.node}={p.ip}" for p in pods.values()))
    yield pods
    for pod in pods.values():  # in case test_delete_pods_leaves_no_lease did not get to run
        if not pod.handle.get("deleted"):
            try:
                cluster.delete_pod(pod)
            except Exception as exc:  # noqa: BLE001
                print(f"deleting {pod.name}: {exc}")


def _local_only(cluster):
    if not hasattr(cluster, "agent_routes"):
        pytest.skip("inspects the agent's node state directly: local back end only")


def test_agent_prepared_every_node(cluster):
    """The agent on each node: bundle in /opt/cni/bin, conflist for the node's pod CIDR (ipMasq off),
    a proto-156 route to every other node's pod CIDR, and the nft masquerade table."""
    _local_only(cluster)
    for node in cluster.nodes():
        others = {n: cluster.pod_cidrs[n] for n in cluster.nodes() if n != node}
        assert cluster.agent_routes(node) == sorted(f"{cidr} via {cluster.node_ip(n)} dev eth0"
                                                    for n, cidr in others.items())
        rc, out = cluster.node_sh(node, "cat /etc/cni/net.d/10-pycni.conflist")
        conf = json.loads(out)
        assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": cluster.pod_cidrs[node]}]]
        assert conf["plugins"][0]["ipMasq"] is False and conf["plugins"][1]["type"] == "portmap"
        rc, out = cluster.node_sh(node, "ls /opt/cni/bin")
        assert {"pycni", "pycni-host-local", "pycni.d", "loopback", "portmap"} <= set(out.split())
        rc, out = cluster.node_sh(node, "nft list table inet pycni-agent")
        assert rc == 0 and cluster.pod_cidrs[node] in out and "10.244.0.0/16" in out


def test_root_namespace_untouched(cluster):
    """dockerd and its nodes live in the harness's own namespace: no docker link or rule in the root one."""
    _local_only(cluster)
    import subprocess

    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in links.splitlines() if ": docker0" in line or ": br-" in line]
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    assert "DOCKER" not in rules


def test_same_node_pod_to_pod(cluster, pods):
    kl_checks.check_same_node(cluster, pods)


def test_cross_node_pod_to_pod_without_nat(cluster, pods):
    kl_checks.check_cross_node(cluster, pods)


def test_host_port_and_egress_masquerade(cluster, pods):
    kl_checks.check_host_port(cluster, pods)


def test_cluster_ip_service(cluster, pods):
    if "service" not in cluster.supports:
        pytest.skip(f"{cluster.name}: no kube-proxy")
    kl_checks.check_service(cluster, pods)


def test_dns(cluster, pods):
    if "dns" not in cluster.supports:
        pytest.skip(f"{cluster.name}: no CoreDNS")
    kl_checks.check_dns(cluster, pods)


def test_node_leaves_and_returns(cluster, pods):
    """The agent reconciles: a node removed from the node list loses its routes on every other node
    (and traffic to its pods stops), and gets them back when it returns."""
    _local_only(cluster)
    n1, n2, n3 = cluster.nodes()
    gone = cluster.pod_cidrs[n3]

    def wait_for(pred, what, timeout=15):
        harness.wait.wait_for(pred, what, timeout=timeout, interval=0.2, fail=AssertionError)

    cluster.write_nodes_file([n1, n2])
    wait_for(lambda: all(not any(r.startswith(gone) for r in cluster.agent_routes(n)) for n in (n1, n2)),
             f"routes to {gone} not removed")
    rc, _ = cluster.exec(pods["a1"], ["ping", "-c", "1", "-W", "1", pods["c1"].ip])
    assert rc != 0, "pod on a departed node still reachable"
    cluster.write_nodes_file([n1, n2, n3])
    wait_for(lambda: all(any(r.startswith(gone) for r in cluster.agent_routes(n)) for n in (n1, n2)),
             f"routes to {gone} not restored")
    kl_checks.ping(cluster, pods["a1"], pods["c1"].ip)


def test_delete_pods_leaves_no_lease(cluster, pods):
    kl_checks.check_cleanup(cluster, pods)
    for pod in pods.values():
        pod.handle["deleted"] = True
