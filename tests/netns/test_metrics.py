"""The daemon's Prometheus endpoint (pycni.metrics): scraped over HTTP inside the node namespace,
while real ADDs, DELs and GCs go through the daemon, a refused and an absent daemon send requests
standalone (the spool), and a real agent round reconciles routes.

Every daemon runs in a node namespace of the test, its metrics on that namespace's loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bridge_support import CNI_PATH, Env, ns_path
from conftest import VENV_BIN, in_ns
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import Daemon, warm

ADDRESS = "127.0.0.1:9472"


def scrape(node: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from GET /metrics in the node namespace."""
    code = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())"
    text = in_ns(node, sys.executable, "-c", code, f"http://{ADDRESS}/metrics").stdout
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def env(netns, node, tmp_path):
    return Env(netns, node, tmp_path)


@pytest.fixture
def conf(env, tmp_path):
    c = env.conf(ipam_type="pycni-host-local")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "10-test.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": c["name"], "plugins": [{k: v for k, v in c.items() if k not in ("cniVersion", "name")}]}))
    return c


@pytest.fixture
def mdaemon(node, tmp_path, conf):
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log",
               ["--metrics-address", ADDRESS, "--cni-conf-dir", str(tmp_path / "conf"),
                "--agent-state", str(tmp_path / "agent.json"), "--log-format", "json"])
    yield d
    assert d.stop() == 0, d.log.read_text()


def test_metrics_move_with_real_adds_dels_and_gc(env, conf, mdaemon, tmp_path):
    base = scrape(env.node)
    assert value(base, "pycni_daemon_info", version=__import__("pycni").__version__) == 1
    assert value(base, "pycni_requests_total", plugin="pycni", verb="ADD", code="0") == 0
    pool = {"network": "testnet", "range": "10.77.0.1-10.77.0.254", "subnet": "10.77.0.0/24"}
    assert value(base, "pycni_ipam_capacity", **pool) == 253  # .1-.254 less the gateway (from the conf dir)
    assert value(base, "pycni_ipam_leases", **pool) == 0

    pods = [env.pod() for _ in range(3)]
    for pod in pods:
        env.add(conf, pod, **warm(mdaemon))
    env.delete(conf, pods[0], **warm(mdaemon))
    bad = env.run("ADD", dict(conf, ipam=dict(conf["ipam"], ranges=[[{"subnet": "10.77.0.0/33"}]])), env.pod(),
                  **warm(mdaemon))
    assert bad.returncode == 1 and bad.json["code"] == 7
    s = scrape(env.node)
    assert value(s, "pycni_requests_total", plugin="pycni", verb="ADD", code="0") == 3
    assert value(s, "pycni_requests_total", plugin="pycni", verb="DEL", code="0") == 1
    assert value(s, "pycni_requests_total", plugin="pycni", verb="ADD", code="7") == 1
    assert value(s, "pycni_request_duration_seconds_count", plugin="pycni", verb="ADD") == 4
    assert value(s, "pycni_request_duration_seconds_sum", plugin="pycni", verb="ADD") > 0
    assert value(s, "pycni_ipam_leases", **pool) == 2

    # GC through the daemon (`pycni gc` hands the verb over): pods[2] is not valid any more
    # (--cni-path: the daemon serves only requests whose CNI_PATH is in its allowlist, docs/security.md)
    gc = in_ns(env.node, str(VENV_BIN / "pycni"), "gc", "--valid-id", pods[1].cid, "--conf-dir",
               str(tmp_path / "conf"), "--socket", str(mdaemon.sock), "--cni-path", CNI_PATH, "--json", check=False)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    s = scrape(env.node)
    assert value(s, "pycni_gc_runs_total", network="testnet", result="ok") == 1
    assert value(s, "pycni_gc_removed_total", network="testnet", kind="lease") == 1
    assert value(s, "pycni_gc_removed_total", network="testnet", kind="link") == 1
    assert value(s, "pycni_ipam_leases", **pool) == 1
    assert value(s, "pycni_requests_total", plugin="pycni", verb="GC", code="0") == 1

    # the daemon's own log, --log-format json: one object per line with the request's fields
    lines = [json.loads(line) for line in mdaemon.log.read_text().splitlines()]
    add = [x for x in lines if x["verb"] == "ADD" and x["containerID"] == pods[1].cid]
    assert add and add[0]["network"] == "testnet" and add[0]["ifname"] == "eth0" and add[0]["code"] == 0
    assert add[0]["duration_ms"] > 0 and add[0]["level"] == "info" and add[0]["time"].endswith("Z")
    failed = [x for x in lines if x["verb"] == "ADD" and x["code"] == 7]
    assert len(failed) == 1


def test_requests_served_standalone_are_counted_from_the_spool(env, netns, conf, mdaemon, tmp_path):
    """Refused: the plugin runs in another network namespace than the daemon (it must not serve it);
    absent: nothing listens on the socket the plugin tries. Both run standalone and append to the
    spool in the socket's directory; the next scrape counts them and empties it."""
    other = netns.create("pycnit-node2")
    pod = env.pod()
    served = env.run("ADD", conf, pod, **warm(mdaemon))  # the daemon's own node: served, nothing spooled
    assert served.returncode == 0
    env.delete(conf, pod, **warm(mdaemon))
    assert (tmp_path / "run" / "standalone.spool").read_text() == ""  # created by the daemon, still empty
    pod2 = env.pod()
    res = in_ns_plugin(other, conf, pod2, {"PYCNI_SOCKET": str(mdaemon.sock)})
    assert res.returncode == 0, res.stderr
    absent = {"PYCNI_SOCKET": str(tmp_path / "run" / "nobody.sock")}
    res = in_ns_plugin(env.node, conf, pod2, absent, "DEL")
    assert res.returncode == 0, res.stderr
    spool = tmp_path / "run" / "standalone.spool"
    assert spool.read_text().split("\n")[:2] == ["pycni ADD refused", "pycni DEL absent"]
    s = scrape(env.node)
    assert value(s, "pycni_standalone_requests_total", plugin="pycni", verb="ADD", reason="refused") == 1
    assert value(s, "pycni_standalone_requests_total", plugin="pycni", verb="DEL", reason="absent") == 1
    assert spool.read_text() == ""
    s = scrape(env.node)  # counted once
    assert value(s, "pycni_standalone_requests_total", plugin="pycni", verb="ADD", reason="refused") == 1
    # PYCNI_NO_DAEMON is the operator's choice, not a fallback: not counted
    res = in_ns_plugin(env.node, conf, pod2, {"PYCNI_NO_DAEMON": "1", "PYCNI_SOCKET": str(mdaemon.sock)}, "DEL")
    assert res.returncode == 0 and spool.read_text() == ""


def in_ns_plugin(node: str, conf: dict, pod, extra: dict, command: str = "ADD"):
    from bridge_support import CNI_PATH
    from conftest import exec_plugin

    return exec_plugin("pycni", command, conf, container_id=pod.cid, netns=pod.path, ifname=pod.ifname,
                       path=CNI_PATH, node=node, extra_env=extra)


def test_agent_reconcile_rounds_and_removed_routes_are_exported(env, mdaemon, tmp_path):
    """A real agent round in the node namespace removes a stale pod-CIDR route of ours (proto 156)."""
    in_ns(env.node, "ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1")
    in_ns(env.node, "ip", "link", "set", "dummy1", "up")
    in_ns(env.node, "ip", "addr", "add", "10.99.0.1/24", "dev", "dummy0")
    in_ns(env.node, "ip", "link", "set", "dummy0", "up")
    in_ns(env.node, "ip", "route", "add", "10.250.7.0/24", "via", "10.99.0.2", "proto", "156")
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": "n1", "address": "10.99.0.1", "podCIDRs": ["10.250.1.0/24"]}]))
    (tmp_path / "agent-conf").mkdir()
    proc = subprocess.run(["nsenter", f"--net={ns_path(env.node)}", "--", sys.executable, "-m", "pycni.agent",
                           "--node-name", "n1", "--nodes-file", str(nodes), "--masq-backend", "none", "--once",
                           "--cni-bin-dir", str(tmp_path / "agent-bin"), "--cni-conf-dir", str(tmp_path / "agent-conf"),
                           "--state-file", str(tmp_path / "agent.json"), "--log-format", "json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = [json.loads(line) for line in proc.stderr.splitlines()]  # --log-format json: one object per line
    assert any("10.250.7.0/24" in x["msg"] and x["logger"] == "pycni.agent" for x in logged), proc.stderr
    assert "10.250.7.0/24" not in in_ns(env.node, "ip", "route").stdout
    s = scrape(env.node)
    assert value(s, "pycni_agent_reconcile_runs_total") == 1
    assert value(s, "pycni_agent_routes_removed_total") == 1
    assert value(s, "pycni_agent_reconcile_failed_runs_total") == 0
    assert value(s, "pycni_agent_last_reconcile_timestamp_seconds") > 0


def test_metrics_are_off_without_an_address(node, tmp_path):
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log")
    try:
        state = json.loads((tmp_path / "run" / "daemon.json").read_text())
        assert state["metrics"] == "" and state["pid"] == d.proc.pid
        listening = in_ns(node, "ss", "-Hltn").stdout.strip()
        assert listening == "", listening
    finally:
        assert d.stop() == 0
    assert not (tmp_path / "run" / "daemon.json").exists()
