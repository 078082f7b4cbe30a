"""`pycni leases`, `pycni status` and `pycni gc [--dry-run]` (pycni.inspect) on a real node namespace:
pods added by the plugin, the commands run in the node namespace, their answers checked against
what the plugin returned and what the kernel holds - and, for everything but `pycni gc`, that
they changed nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import VENV_BIN, in_ns
from test_bridge_support import Env, needs_root
from test_daemon import Daemon

pytestmark = needs_root
COLD = {"extra_env": {"PYCNI_NO_DAEMON": "1"}}


@pytest.fixture
def env(netns, node, tmp_path):
    return Env(netns, node, tmp_path)


@pytest.fixture
def setup(env, tmp_path):
    """A conf dir with one pycni network (masquerading on), two pods added standalone."""
    conf = env.conf(ipam_type="pycni-host-local", ipMasq=True)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    plugin = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
    (conf_dir / "10-test.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": conf["name"],
                                                           "plugins": [plugin]}))
    pods = [env.pod() for _ in range(2)]
    ips = [env.add(conf, pod, **COLD)["ips"][0]["address"].split("/")[0] for pod in pods]
    return conf, conf_dir, pods, ips


def pycni(env: Env, *args: str, ok: bool = True):
    proc = in_ns(env.node, str(VENV_BIN / "pycni"), *args, check=False)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def node_state(env: Env, tmp_path) -> tuple:
    store = tmp_path / "ipam" / "testnet"
    files = sorted((p.name, p.read_bytes()) for p in store.iterdir() if p.name != "lock")
    return files, sorted(env.links()), env.node_cmd("nft", "list", "ruleset")


def test_leases_show_who_holds_each_address(env, setup, tmp_path):
    _conf, conf_dir, pods, ips = setup
    before = node_state(env, tmp_path)
    rows = json.loads(pycni(env, "leases", "--conf-dir", str(conf_dir), "--json").stdout)["leases"]
    assert sorted((r["address"], r["containerID"], r["ifname"]) for r in rows) == \
        sorted((ip, pod.cid, "eth0") for ip, pod in zip(ips, pods, strict=True))
    links = env.links()
    for r in rows:
        assert r["vethExists"] is True and r["veth"] in links and r["network"] == "testnet"
        assert 0 <= r["ageSeconds"] < 3600
    # who holds ips[1]? one row, plain text
    who = pycni(env, "leases", "--data-dir", str(tmp_path / "ipam"), "--network", "testnet", "--address", ips[1])
    body = who.stdout.splitlines()
    assert body[0].split() == ["NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "AGE", "VETH"]
    assert len(body) == 2 and body[1].split()[:4] == ["testnet", ips[1], pods[1].cid, "eth0"]
    assert pycni(env, "leases", "--conf-dir", str(conf_dir), "--address", "10.77.0.200", ok=False).returncode == 1
    # the pod's namespace goes away without a DEL: its veth goes with it, the lease stays (a leak)
    env.netns.created.remove(pods[0].name)
    subprocess.run(["ip", "netns", "del", pods[0].name], check=True)
    rows = json.loads(pycni(env, "leases", "--conf-dir", str(conf_dir), "--json").stdout)["leases"]
    assert {r["address"]: r["vethExists"] for r in rows} == {ips[0]: False, ips[1]: True}
    assert "missing" in pycni(env, "leases", "--conf-dir", str(conf_dir)).stdout
    assert node_state(env, tmp_path)[0] == before[0], "pycni leases changed the store"


def test_status_reports_bridge_pool_masquerade_daemon_and_agent(env, setup, tmp_path):
    _conf, conf_dir, _pods, _ips = setup
    before = node_state(env, tmp_path)
    agent_state = tmp_path / "agent.json"
    common = ["--conf-dir", str(conf_dir), "--agent-state", str(agent_state)]
    proc = pycni(env, "status", *common, "--socket", str(tmp_path / "run" / "pycni.sock"), "--json", ok=False)
    assert proc.returncode == 1  # no daemon: a problem worth a non-zero status
    doc = json.loads(proc.stdout)
    assert doc["daemon"]["running"] is False and doc["agent"] is None
    (net,) = doc["networks"]
    assert net["bridge"]["exists"] and net["bridge"]["up"] and net["bridge"]["ports"] == 2
    assert "10.77.0.1/24" in net["bridge"]["addresses"]
    assert net["pool"]["ranges"] == [{"range": "10.77.0.1-10.77.0.254", "subnet": "10.77.0.0/24", "leased": 2,
                                      "capacity": 253}]
    masq = net["masquerade"]
    assert masq["enabled"] and masq["installed"]
    assert masq.get("nftables", {}).get("podAddresses") == 2 or masq.get("iptables", {}).get("rules") == 4, masq

    from pycni.runstate import AgentState

    AgentState(str(agent_state)).record({"node": "n1", "changes": ["x"], "errors": [], "seconds": 0.2})
    d = Daemon(env.node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log")
    try:
        proc = pycni(env, "status", *common, "--socket", str(d.sock))
        assert "daemon: running, version" in proc.stdout and "32 workers in " in proc.stdout
        assert "pool 10.77.0.1-10.77.0.254 (10.77.0.0/24): 2/253 leased (0.8%)" in proc.stdout
        assert "bridge cni0: up, 2 port(s)" in proc.stdout
        assert "agent: node n1" in proc.stdout and "1 change(s), 0 error(s)" in proc.stdout
        doc = json.loads(pycni(env, "status", *common, "--socket", str(d.sock), "--json").stdout)
        assert doc["daemon"]["running"] and doc["daemon"]["pid"] == d.proc.pid and doc["daemon"]["uptimeSeconds"] >= 0
        from pycni.daemon.server import default_processes

        assert doc["daemon"]["processes"] == default_processes()  # one worker process per CPU
    finally:
        assert d.stop() == 0
    assert node_state(env, tmp_path) == before, "pycni status changed the node"


def test_gc_dry_run_lists_and_gc_removes_only_invalid_attachments(env, setup, tmp_path):
    _conf, conf_dir, pods, ips = setup
    before = node_state(env, tmp_path)
    common = ["--conf-dir", str(conf_dir), "--no-daemon", "--cni-path", str(VENV_BIN)]
    doc = json.loads(pycni(env, "gc", "--dry-run", "--valid-id", pods[0].cid, *common, "--json").stdout)
    (net,) = doc["networks"]
    assert net["leases"] == [{"address": ips[1], "containerID": pods[1].cid, "ifname": "eth0"}]
    assert [v["containerID"] for v in net["veths"]] == [pods[1].cid]
    text = pycni(env, "gc", "--dry-run", "--valid-id", pods[0].cid, *common).stdout
    assert "testnet: would remove 1 lease(s), 1 veth(s)" in text and ips[1] in text
    assert node_state(env, tmp_path) == before, "--dry-run changed the node"

    # an empty valid list would remove everything: refused, nothing changed
    empty = tmp_path / "valid.json"
    empty.write_text("[]")
    proc = pycni(env, "gc", "--valid-attachments", str(empty), *common, ok=False)
    assert proc.returncode == 2 and "--allow-empty" in proc.stderr
    assert node_state(env, tmp_path) == before

    doc = json.loads(pycni(env, "gc", "--valid-id", pods[0].cid, *common, "--json").stdout)
    (net,) = doc["networks"]
    assert [x["address"] for x in net["leases"]] == [ips[1]] and len(net["veths"]) == 1
    assert net["left"] == {"leases": [], "veths": []}
    files = [name for name, _ in node_state(env, tmp_path)[0]]
    assert ips[0] in files and ips[1] not in files
    assert net["veths"][0]["name"] not in env.links()
    # the pod still valid is untouched, and its masquerade entry is the only one left
    rows = json.loads(pycni(env, "leases", "--conf-dir", str(conf_dir), "--json").stdout)["leases"]
    assert [(r["address"], r["vethExists"]) for r in rows] == [(ips[0], True)]
    masq = json.loads(pycni(env, "status", "--conf-dir", str(conf_dir), "--json", ok=False).stdout)["networks"][0]
    assert masq["masquerade"].get("nftables", {}).get("podAddresses") == 1 or \
        masq["masquerade"].get("iptables", {}).get("rules") == 2
