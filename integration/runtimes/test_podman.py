"""podman's CNI backend drives the plugin under test.

podman (Debian's 4.3) runs inside a node namespace with `network_backend = "cni"` and `cni_plugin_dirs`
pointing at the plugin under test; containers are started from busybox rootfs directories
(`--rootfs`), so no image is involved. Containers get addresses, reach each other and a hostPort, and
`podman rm -f` leaves no lease, veth, rule, netns or process behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import time

import pytest
from harness.cleanup import log
from harness.images import busybox_rootfs
from harness.netns import http_get, in_netns
from harness.processes import pids_in_netns
from harness.wait import wait_for
from rt_checks import assert_node_clean, leftover_rules, node_snapshot
from rt_podman import Podman

pytestmark = pytest.mark.runtimes

SUBNET = ipaddress.ip_network("10.77.1.0/24")
GATEWAY = "10.77.1.1"
NETWORK = "pycni-pod"
BRIDGE = "pycnipod0"
NODE_ADDR, CLIENT_ADDR = "10.79.0.1", "10.79.0.2"
HOST_PORT = 8081
NAMES = ["c0", "c1", "c2"]


class Env:
    def __init__(self, session, node, client, podman: Podman, data_dir, baseline):
        self.session, self.node, self.client, self.podman = session, node, client, podman
        self.data_dir, self.baseline = data_dir, baseline
        self.containers: dict[str, tuple[str, str]] = {}  # name -> (ip, netns path)
        self.listing_stderr = ""


@pytest.fixture(scope="module")
def pm(rt_session):
    root = rt_session.scratch / "podman"
    (root / "net.d").mkdir(parents=True)
    data_dir = root / "ipam"
    conflist = rt_session.conflist(NETWORK, BRIDGE, str(SUBNET), data_dir)
    (root / "net.d" / f"{NETWORK}.conflist").write_text(json.dumps(conflist, indent=2))
    node = rt_session.new_node("pycnirt-pm")
    client = rt_session.new_client(node, "pycnirt-pcl", f"{NODE_ADDR}/24", f"{CLIENT_ADDR}/24")
    podman = Podman(node, root, rt_session.bin_dir, root / "net.d", NETWORK)
    listing = podman("network", "ls", "--format", "{{.Name}}")
    assert NETWORK in listing.stdout.split(), listing.stdout
    env = Env(rt_session, node, client, podman, data_dir, node_snapshot(node, data_dir))
    env.listing_stderr = listing.stderr
    yield env
    try:
        left = podman.names()
        if left:
            podman("rm", "-f", "-t", "0", *left, check=False)
    finally:
        leftover = pids_in_netns({node.inode})
        if leftover:
            log(f"processes still in {node.name} after podman rm: {leftover}")
        client.delete()
        node.delete()


def run(pm: Env, name: str, *cmd: str, ports: tuple[str, ...] = ()) -> tuple[str, str]:
    rootfs = busybox_rootfs(pm.podman.scratch / f"rootfs-{name}")
    args = ["run", "-d", "--name", name, "--network", NETWORK,
            "--cgroup-parent", pm.session.cgroup_parent + "/podman"]
    for p in ports:
        args += ["-p", p]
    t0 = time.monotonic()
    pm.podman(*args, "--rootfs", str(rootfs), *cmd)
    ip, netns = pm.podman.address(name)
    pm.session.own_netns(netns)
    log(f"podman run {name}: ip={ip} netns={netns} ({(time.monotonic() - t0) * 1000:.0f} ms)")
    pm.containers[name] = (ip, netns)
    return ip, netns


def test_podman_accepts_the_network_config(pm):
    """podman (libcni ValidateNetworkList) execs every plugin of the conflist with CNI_COMMAND=VERSION and
    the placeholders CNI_NETNS=CNI_IFNAME=CNI_PATH="dummy"; a plugin that refuses them is skipped and
    podman falls back to its built-in network (plugin "bridge"...)."""
    assert "Error validating CNI config" not in pm.listing_stderr, pm.listing_stderr


@pytest.fixture(scope="module")
def containers(pm):
    run(pm, "c0", "/bin/httpd", "-f", "-p", "80", "-h", "/www", ports=(f"{HOST_PORT}:80",))
    for name in NAMES[1:]:
        run(pm, name, "/pause")
    return pm.containers


def test_containers_get_unique_addresses_from_the_plugin(pm, containers):
    ips = [ip for ip, _ in containers.values()]
    assert len(set(ips)) == len(NAMES), ips
    for name, (ip, _) in containers.items():
        assert ipaddress.ip_address(ip) in SUBNET and ip != GATEWAY
        assert (pm.data_dir / NETWORK / ip).is_file(), f"no lease for {name} ({ip})"
        out = pm.podman("exec", name, "/bin/ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert f"inet {ip}/{SUBNET.prefixlen}" in out, out


def test_containers_reach_each_other(pm, containers):
    for (a, (_, ns_a)), (b, (ip_b, _)) in itertools.permutations(containers.items(), 2):
        assert in_netns(ns_a, "ping", "-c1", "-W2", ip_b).returncode == 0, f"{a} cannot ping {b} ({ip_b})"
    # and from inside a container, with its own tools
    out = pm.podman("exec", "c1", "/bin/ping", "-c1", "-W2", containers["c2"][0], check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_host_port_reaches_the_container(pm, containers):
    want = "hello from a pycni pod"
    ip, netns = containers["c0"]
    with contextlib.suppress(TimeoutError):  # httpd is up when the container's own address answers
        wait_for(lambda: want in http_get(netns, ip, 80, timeout=1), "httpd up", timeout=20, interval=0.1)
    out = http_get(pm.client.path, NODE_ADDR, HOST_PORT)
    assert want in out, f"client -> {NODE_ADDR}:{HOST_PORT}: {out}"
    out = http_get(containers["c1"][1], NODE_ADDR, HOST_PORT)
    assert want in out, f"c1 -> {NODE_ADDR}:{HOST_PORT}: {out}"
    during = node_snapshot(pm.node, pm.data_dir)
    assert leftover_rules(pm.baseline, during, [ip]), "no rule names c0: leak check blind"


def test_rm_leaves_nothing_behind(pm, containers):
    needles = []
    for name, (ip, _) in containers.items():
        cid = pm.podman.inspect(name)["Id"]
        needles += [ip, cid]
    netns_files = [ns for _, ns in containers.values()]
    pm.podman("rm", "-f", "-t", "0", *containers)
    assert pm.podman.names() == []
    assert_node_clean(pm.node, pm.data_dir, pm.baseline, needles, netns_files)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not pids_in_netns({pm.node.inode}), "conmon gone", timeout=5, interval=0.1)
    assert not pids_in_netns({pm.node.inode}), "processes (conmon?) left in the node namespace"
