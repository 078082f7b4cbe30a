"""pycni driven by the upstream cnitool (build/bin/cnitool, containernetworking/cni v1.3) exactly as its
README documents it: `cnitool add|check|status|gc|del <network> <netns>` with NETCONFPATH, CNI_PATH,
CNI_ARGS, CAP_ARGS and CNI_IFNAME. STATUS goes through libcni's GetStatusNetworkList: pycni's real
readiness, code 50 (cannot ADD) or 51 (existing containers cut off) with a message saying what is wrong
(read through our driver, which prints the plugin's error object).

Root; each test in its own node namespace, with a network name of its own (cnitool's result cache is
the machine's /var/lib/cni).
"""

from __future__ import annotations

import json

import pytest
from bridge_support import Env, bridge_run_dir_cleanup
from test_bridge_gc import CNITOOL, DRIVER, lib

__all__ = ["bridge_run_dir_cleanup", "lib"]  # fixtures, imported to register them


@pytest.fixture
def env(netns, node, tmp_path) -> Env:
    return Env(netns, node, tmp_path)


def _error(proc) -> dict:
    """The plugin's error object, as our driver prints it on stderr."""
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_add_check_status_gc_del(env, lib):
    conflist = json.loads((lib.confdir / "10-gc.conflist").read_text())
    conflist["plugins"][0]["capabilities"] = {"ips": True}  # libcni passes CAP_ARGS only for these
    (lib.confdir / "10-gc.conflist").write_text(json.dumps(conflist))
    pod = env.pod()
    res = lib(CNITOOL, "add", lib.name, pod.path, env={"CNI_IFNAME": "net0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p",
                                                       "CAP_ARGS": json.dumps({"ips": ["10.77.0.9/24"]})})
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["cniVersion"] == "1.1.0" and result["ips"][0]["address"] == "10.77.0.9/24"
    assert result["interfaces"][2]["name"] == "net0" and "dns" not in result  # libcni 1.3 leaves empty dns out
    for verb in ("check", "status"):
        res = lib(CNITOOL, verb, lib.name, pod.path, env={"CNI_IFNAME": "net0"})
        assert res.returncode == 0 and res.stdout == "", (verb, res.stderr)
    res = lib(CNITOOL, "del", lib.name, pod.path, env={"CNI_IFNAME": "net0"})
    assert res.returncode == 0, res.stderr
    assert lib.leases() == {} and lib.veths() == set()
    res = lib(CNITOOL, "gc", lib.name, pod.path)  # nothing left: a no-op that succeeds
    assert res.returncode == 0, res.stderr


def test_status_pool_exhausted_is_50(env, lib):
    conflist = json.loads((lib.confdir / "10-gc.conflist").read_text())
    conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.77.0.0/30"}]]  # one address: .2
    (lib.confdir / "10-gc.conflist").write_text(json.dumps(conflist))
    pod = env.pod()
    assert lib(CNITOOL, "status", lib.name, pod.path).returncode == 0
    assert lib(CNITOOL, "add", lib.name, pod.path).returncode == 0
    res = lib(CNITOOL, "status", lib.name, pod.path)
    assert res.returncode != 0 and "address pool exhausted" in res.stderr and "every address is leased" in res.stderr, \
        res.stderr
    err = _error(lib(DRIVER, "status", lib.name))
    assert err["code"] == 50, err
    assert lib(CNITOOL, "del", lib.name, pod.path).returncode == 0
    assert lib(CNITOOL, "status", lib.name, pod.path).returncode == 0


def test_status_bridge_taken_is_50(env, lib):
    env.node_cmd("ip", "link", "add", "cni0", "type", "veth", "peer", "name", "other0")
    err = _error(lib(DRIVER, "status", lib.name))
    assert err["code"] == 50 and "not a bridge" in err["msg"], err


@pytest.mark.parametrize("damage", ["bridge-deleted", "bridge-down", "veth-detached"])
def test_status_attachments_cut_off_is_51(env, lib, damage):
    pod = env.pod()
    assert lib(CNITOOL, "add", lib.name, pod.path).returncode == 0
    veth = next(iter(lib.veths()))
    cmd = {"bridge-deleted": ("ip", "link", "del", "cni0"), "bridge-down": ("ip", "link", "set", "cni0", "down"),
           "veth-detached": ("ip", "link", "set", veth, "nomaster")}[damage]
    env.node_cmd(*cmd)
    res = lib(CNITOOL, "status", lib.name, pod.path)
    assert res.returncode != 0 and "no connectivity" in res.stderr, res.stderr
    err = _error(lib(DRIVER, "status", lib.name))
    assert err["code"] == 51, err
    assert lib(CNITOOL, "del", lib.name, pod.path).returncode == 0
    assert lib(CNITOOL, "status", lib.name, pod.path).returncode == 0  # nothing left to be cut off
