"""Concurrency: parallel ADDs on one network, and a storm of random ADD / DEL / CHECK / GC from eight
workers racing on one store - pycni in-process (the daemon's path) and exec'd, the reference
host-local exec'd by pycni and on its own, pycni-host-local exec'd - with invariant checks after
every step (tests/support/storm.py). PYCNI_STORM_OPS sets the number of operations (default 1000).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import reliability as rel
import storm
from bridge_support import bridge_run_dir_cleanup

__all__ = ["bridge_run_dir_cleanup"]


@pytest.fixture
def lab():
    lab = rel.Lab("pycnicc")
    try:
        yield lab
    finally:
        lab.cleanup()


def test_50_parallel_adds_get_distinct_reachable_addresses(lab):
    node = lab.netns("node")
    data = lab.tmp / "ipam"
    conf = rel.bridge_conf(data, name="par", subnet="10.67.0.0/24", ipMasq=True)
    pods = [lab.netns("pod") for _ in range(50)]
    warm = rel.run("pycni", "ADD", conf, node=node, cid="warm", netns=rel.ns_path(pods[0]))
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert rel.run("pycni", "DEL", conf, node=node, cid="warm", netns=rel.ns_path(pods[0])).returncode == 0
    baseline = {"links": rel.node_links(node), "firewall": rel.firewall(node),
                "store": rel.store_state(data / "par")}

    def add(i: int) -> rel.Outcome:
        return rel.run("pycni", "ADD", conf, node=node, cid=f"par{i}", netns=rel.ns_path(pods[i]))

    with ThreadPoolExecutor(max_workers=50) as pool:
        runs = list(pool.map(add, range(50)))
    for res in runs:
        assert res.returncode == 0, res.stdout + res.stderr[-500:]
    ips = [res.json["ips"][0]["address"].split("/")[0] for res in runs]
    assert len(set(ips)) == 50, sorted(ips)
    assert rel.leases(data / "par") == {ip: (f"par{i}", "eth0") for i, ip in enumerate(ips)}
    for i, ip in enumerate(ips):
        assert rel.pod_addresses(pods[i]) == [ip]
        assert rel.ping(node, ip), f"{ip} (pod {i}) does not answer"
    with ThreadPoolExecutor(max_workers=50) as pool:
        dels = list(pool.map(lambda i: rel.run("pycni", "DEL", conf, node=node, cid=f"par{i}",
                                               netns=rel.ns_path(pods[i])), range(50)))
    assert all(d.returncode == 0 for d in dels), [d.stdout for d in dels if d.returncode]
    assert rel.node_links(node) == baseline["links"]
    assert rel.firewall(node) == baseline["firewall"]
    assert rel.store_state(data / "par") == baseline["store"]


@pytest.mark.reference
def test_storm(lab, reference):
    """Run against both reference releases racing pycni on one store; the operations are split between
    the two runs."""
    ops = max(300, int(os.environ.get("PYCNI_STORM_OPS", "1000")) // 2)
    start = time.monotonic()
    s = storm.Storm(lab, workers=8, reference_dir=reference.dir)
    stats = s.run(ops)
    print("\n" + storm.table(stats, time.monotonic() - start, f"storm of {ops} operations"))
    assert stats.total >= ops
    assert not stats.problems, "\n".join(stats.problems[:20])
    assert stats.leaks == 0 and stats.duplicates == 0 and not stats.errors
    assert stats.full_checks >= ops // 100
    # every route really ran: exec'd and in-process pycni, the reference host-local both ways
    for route in ("worker", "exec", "ref-ipam", "hl", "ref-hl"):
        assert stats.routes[route] > 0, stats.routes


def test_invariant_checks_catch_leaks(lab):
    """The storm's checks are real: a lease nobody holds, a stray veth and a masquerade entry of no
    attachment are each reported."""
    s = storm.Storm(lab, workers=1, bridge_slots=1, hl_slots=0)
    (s.net_dir / "10.66.0.200").write_bytes(b"ghost\r\neth0")
    rel.sh("ip", "link", "add", "vethdeadbeef", "type", "veth", "peer", "name", "ghostpeer", ns=s.node)
    rel.sh("nft", "add", "table", "inet", "pycni", ns=s.node)
    rel.sh("nft", "add", "set", "inet", "pycni", "a4_ghost", "{ type ipv4_addr; }", ns=s.node)
    rel.sh("nft", "add", "element", "inet", "pycni", "a4_ghost", "{ 10.66.0.201 }", ns=s.node)
    s.full_check()
    text = "\n".join(s.stats.problems)
    assert "10.66.0.200" in text and "vethdeadbeef" in text and "10.66.0.201" in text, text
    assert s.stats.leaks >= 3
