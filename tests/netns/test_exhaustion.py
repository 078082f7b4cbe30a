"""Exhaustion: a full range is a clear error naming the range (code 102) that leaves nothing behind,
and a DEL makes room again - for pycni-host-local and for the bridge (whose rollback must then
remove the veth it created). Plugins run in a node namespace.
"""

from __future__ import annotations

import pytest
import reliability as rel
from bridge_support import bridge_run_dir_cleanup

__all__ = ["bridge_run_dir_cleanup"]

RANGE = {"subnet": "10.69.0.0/24", "rangeStart": "10.69.0.10", "rangeEnd": "10.69.0.12"}


@pytest.fixture
def lab():
    lab = rel.Lab("pycnix")
    try:
        yield lab
    finally:
        lab.cleanup()


def _assert_exhausted(res: rel.Outcome) -> None:
    assert "Traceback" not in res.stderr
    assert res.returncode != 0 and res.documents == 1, res.stdout
    err = res.json
    assert err["code"] == 102, err
    assert "10.69.0.10-10.69.0.12" in err["msg"], err  # the range is named


def test_host_local_exhaustion_and_room_after_del(lab):
    node = lab.netns("node")
    data = lab.tmp / "ipam"
    conf = rel.hl_conf(data, name="full", ranges=[[RANGE]])

    def hl(command, cid):
        return rel.run("pycni-host-local", command, conf, node=node, cid=cid, netns="/var/run/netns/none")

    got = [hl("ADD", f"c{i}").json["ips"][0]["address"] for i in range(3)]
    assert got == ["10.69.0.10/24", "10.69.0.11/24", "10.69.0.12/24"]
    before = rel.files(data)
    _assert_exhausted(hl("ADD", "c3"))
    assert rel.files(data) == before  # not even the cursor moved
    assert hl("DEL", "c1").returncode == 0
    assert hl("ADD", "c3").json["ips"][0]["address"] == "10.69.0.11/24"
    _assert_exhausted(hl("ADD", "c4"))


@pytest.mark.parametrize("ipam_type", ["pycni-host-local", "host-local"])
def test_bridge_exhaustion_rolls_back_and_room_after_del(lab, ipam_type):
    node = lab.netns("node")
    data = lab.tmp / "ipam"
    version = "1.1.0" if ipam_type == "pycni-host-local" else "1.0.0"
    conf = rel.bridge_conf(data, name="full", ranges=[[RANGE]], ipam_type=ipam_type, version=version, ipMasq=True)
    pods = [lab.netns("pod") for _ in range(4)]

    def br(command, i):
        return rel.run("pycni", command, conf, node=node, cid=f"c{i}", netns=rel.ns_path(pods[i]))

    for i in range(3):
        assert br("ADD", i).returncode == 0
    state = {"links": rel.node_links(node), "firewall": rel.firewall(node), "store": rel.store_state(data / "full")}
    res = br("ADD", 3)
    if ipam_type == "host-local":  # the reference's own message: "no IP addresses available in range set"
        assert res.returncode != 0 and res.json["code"] != 0, res.stdout
        assert "10.69.0.10-10.69.0.12" in res.json["msg"] + res.json.get("details", ""), res.json
    else:
        _assert_exhausted(res)
    assert rel.node_links(node) == state["links"], "the failed ADD left a link"
    assert rel.firewall(node) == state["firewall"]
    assert rel.store_state(data / "full") == state["store"]
    assert rel.pod_link_names(pods[3]) == ["lo"]
    assert br("DEL", 0).returncode == 0
    res = br("ADD", 3)
    assert res.returncode == 0, res.stdout
    assert res.json["ips"][0]["address"] == "10.69.0.10/24"
    assert rel.ping(node, "10.69.0.10")
