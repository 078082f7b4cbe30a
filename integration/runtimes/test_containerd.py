"""containerd's CRI plugin drives the plugin under test, as kubelet would make it.

One containerd (Debian's 1.6) runs in a node namespace with its own root, state and socket; its CNI
conf dir holds one conflist (the bridge plugin + portmap), its bin dir the plugin under test plus
Debian's loopback and portmap. The tests run in file order on shared pods (module fixtures):
addresses, pod-to-pod traffic, a container's view of eth0, a hostPort through portmap, a containerd
crash and restart, and finally a teardown that must leave nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.cleanup import log
from harness.images import busybox_oci_archive
from harness.netns import http_get, in_netns
from harness.processes import pid_alive, pids_in_netns
from harness.wait import wait_for
from rt_checks import assert_node_clean, leftover_rules, node_snapshot
from rt_containerd import CRI, Containerd

pytestmark = pytest.mark.runtimes

SUBNET = ipaddress.ip_network("10.77.0.0/24")
GATEWAY = "10.77.0.1"
NETWORK = "pycni-ctd"
BRIDGE = "pycnictd0"
IMAGE = "localhost/pycni/sandbox:test"
NODE_ADDR, CLIENT_ADDR = "10.78.0.1", "10.78.0.2"  # a veth between the node and a client namespace
HOST_PORT = 8080


class Env:
    def __init__(self, session, node, client, ctd: Containerd, cri: CRI, data_dir: Path, baseline: dict):
        self.session, self.node, self.client, self.ctd, self.cri = session, node, client, ctd, cri
        self.data_dir, self.baseline = data_dir, baseline
        self.dir = ctd.scratch
        self.cgroup_parent = session.cgroup_parent + "/containerd"
        self.pods: list = []
        self.removed_ids: list[str] = []

    def new_cri(self) -> None:
        self.cri.close()
        self.cri = CRI(self.ctd.socket)


@pytest.fixture(scope="module")
def ctd(rt_session):
    t0 = time.monotonic()
    root = rt_session.scratch / "containerd"
    (root / "net.d").mkdir(parents=True)
    data_dir = root / "ipam"
    conflist = rt_session.conflist(NETWORK, BRIDGE, str(SUBNET), data_dir)
    (root / "net.d" / "10-pycni.conflist").write_text(json.dumps(conflist, indent=2))
    node = rt_session.new_node("pycnirt-ctd")
    client = rt_session.new_client(node, "pycnirt-cli", f"{NODE_ADDR}/24", f"{CLIENT_ADDR}/24")
    ctd = Containerd(node, root, rt_session.bin_dir, root / "net.d", IMAGE)
    ctd.start()
    tar = busybox_oci_archive(root / "sandbox-oci.tar", IMAGE)
    ctd.ctr("-n", "k8s.io", "images", "import", str(tar))
    cri = CRI(ctd.socket)
    assert IMAGE in cri.images()
    log(f"{cri.version()} ready in {time.monotonic() - t0:.1f}s (node {node.name})")
    env = Env(rt_session, node, client, ctd, cri, data_dir, node_snapshot(node, data_dir))
    yield env
    # Finalizer: whatever a failed test left, remove it through CRI, then stop containerd by PID.
    try:
        if env.ctd.daemon and env.ctd.daemon.alive():
            env.removed_ids += env.cri.remove_all()
    finally:
        env.cri.close()
        env.ctd.stop()
        left = pids_in_netns({node.inode})
        if left:
            log(f"processes still in {node.name} after containerd stopped: {left}")
        client.delete()
        node.delete()


@pytest.fixture(scope="module")
def pods(ctd):
    """Three pods; the first maps hostPort 8080 to its port 80."""
    for n in range(3):
        t0 = time.monotonic()
        pod = ctd.cri.run_pod(f"pod{n}", ctd.dir / "logs", ctd.cgroup_parent,
                              port_mappings=[(80, HOST_PORT)] if n == 0 else [])
        log(f"RunPodSandbox pod{n}: {pod.id[:12]} ip={pod.ip} netns={pod.netns} "
            f"({(time.monotonic() - t0) * 1000:.0f} ms)")
        ctd.pods.append(pod)
    return ctd.pods


def ping(netns: str, ip: str) -> bool:
    return in_netns(netns, "ping", "-c1", "-W2", ip).returncode == 0


def test_pods_get_unique_addresses_in_the_subnet(ctd, pods):
    ips = [p.ip for p in pods]
    assert all(ips), f"PodSandboxStatus without an IP: {ips}"
    assert len(set(ips)) == len(ips), ips
    for ip in ips:
        assert ipaddress.ip_address(ip) in SUBNET and ip != GATEWAY
    # the leases on disk are exactly these addresses, held by these sandboxes
    for pod in pods:
        lease = ctd.data_dir / NETWORK / pod.ip
        assert lease.is_file(), f"no lease file {lease}"
        assert lease.read_bytes().split(b"\r\n")[0].decode() == pod.id
    for pod in pods:
        assert pod.netns and Path(pod.netns).exists(), pod.netns
        status, info = ctd.cri.status(pod.id)
        assert status.state == 0  # SANDBOX_READY
        assert info.get("cniResult"), "containerd recorded no CNI result"


def test_pods_reach_each_other_by_pod_ip(pods):
    for a, b in itertools.permutations(pods, 2):
        assert ping(a.netns, b.ip), f"{a.name} ({a.ip}) cannot ping {b.name} ({b.ip})"
    assert ping(pods[0].netns, GATEWAY)


def test_a_container_sees_eth0_with_the_pod_ip(ctd, pods):
    pod = pods[1]
    cid = ctd.cri.create_container(pod, "shell", IMAGE, ["/pause"])
    code, out, err = ctd.cri.exec_sync(cid, ["/bin/ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert code == 0, err
    assert f"inet {pod.ip}/{SUBNET.prefixlen}" in out, out
    code, out, err = ctd.cri.exec_sync(cid, ["/bin/ip", "route"])
    assert code == 0 and f"default via {GATEWAY}" in out, out + err
    # and from inside the container, its neighbour pod
    code, out, err = ctd.cri.exec_sync(cid, ["/bin/ping", "-c1", "-W2", pods[2].ip])
    assert code == 0, out + err


def test_host_port_reaches_the_pod(ctd, pods):
    pod = pods[0]
    ctd.cri.create_container(pod, "web", IMAGE, ["/bin/httpd", "-f", "-p", "80", "-h", "/www"])
    want = "hello from a pycni pod"
    with contextlib.suppress(TimeoutError):  # httpd is up when the pod's own address answers
        wait_for(lambda: want in http_get(pod.netns, pod.ip, 80, timeout=1), "httpd up", timeout=20, interval=0.1)
    # a client namespace wired to the node: DNAT in PREROUTING
    out = http_get(ctd.client.path, NODE_ADDR, HOST_PORT)
    assert want in out, f"client -> {NODE_ADDR}:{HOST_PORT}: {out}"
    # the node itself: DNAT in OUTPUT
    out = http_get(ctd.node.path, NODE_ADDR, HOST_PORT)
    assert want in out, f"node -> {NODE_ADDR}:{HOST_PORT}: {out}"
    # another pod, through the node's address
    out = http_get(pods[2].netns, NODE_ADDR, HOST_PORT)
    assert want in out, f"pod2 -> {NODE_ADDR}:{HOST_PORT}: {out}"
    during = node_snapshot(ctd.node, ctd.data_dir)
    per_pod = leftover_rules(ctd.baseline, during, [p.ip for p in pods] + [p.id for p in pods])
    log(f"{len(per_pod)} per-pod firewall lines while 3 pods run:\n  " + "\n  ".join(per_pod))
    assert leftover_rules(ctd.baseline, during, [pod.ip]), "no rule names pod0: leak check blind"


def _shim_pids(ctd) -> set[int]:
    return {pid for pid in pids_in_netns({ctd.node.inode})
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("containerd-shim")}


def test_containerd_restart_keeps_pods_and_new_pods_work(ctd, pods):
    shims = _shim_pids(ctd)
    assert shims, "no containerd-shim in the node namespace"
    old = ctd.ctd.daemon.pid
    ctd.ctd.stop(signal.SIGKILL)  # a crash, by PID
    assert not pid_alive(old)
    assert all(pid_alive(p) for p in shims), "shims died with containerd"
    for a, b in itertools.permutations(pods, 2):  # the data path does not need containerd
        assert ping(a.netns, b.ip)
    ctd.ctd.start()
    ctd.new_cri()
    for pod in pods:
        ip = pod.ip
        ctd.cri.refresh(pod)
        assert pod.ip == ip, f"{pod.name}: {ip} became {pod.ip!r} after the restart"
        status, _ = ctd.cri.status(pod.id)
        assert status.state == 0, f"{pod.name} not READY after the restart"
    for a, b in itertools.permutations(pods, 2):
        assert ping(a.netns, b.ip)
    new = ctd.cri.run_pod("pod3", ctd.dir / "logs", ctd.cgroup_parent)
    ctd.pods.append(new)
    log(f"after restart: pod3 ip={new.ip}")
    assert new.ip and ipaddress.ip_address(new.ip) in SUBNET
    assert new.ip not in [p.ip for p in pods[:-1]]
    assert ping(new.netns, pods[0].ip) and ping(pods[0].netns, new.ip)
    code, out, err = ctd.cri.exec_sync(pods[1].containers[0], ["/bin/ping", "-c1", "-W2", new.ip]) \
        if pods[1].containers else (0, "", "")
    assert code == 0, out + err


def test_parallel_pods_get_distinct_addresses(ctd, pods):
    """kubelet starts and stops pods concurrently: ADDs and DELs race on the store and the bridge."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        burst = list(pool.map(lambda n: ctd.cri.run_pod(f"burst{n}", ctd.dir / "logs", ctd.cgroup_parent),
                              range(4)))
    ctd.pods.extend(burst)
    ips = [p.ip for p in pods]
    assert all(ips) and len(set(ips)) == len(ips), ips
    for pod in burst:
        assert ping(pod.netns, pods[0].ip)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(ctd.cri.stop_and_remove, burst))
    for pod in burst:
        pods.remove(pod)
        ctd.removed_ids.append(pod.id)
        assert not (ctd.data_dir / NETWORK / pod.ip).exists(), f"lease of {pod.name} ({pod.ip}) left"


def _pycni_cmd(ctd, *args: str) -> dict:
    """`pycni <args> --json` from the dev venv (it has the CRI client packages) in the node namespace."""
    exe = Path(sys.executable).with_name("pycni")
    proc = ctd.node.run(str(exe), *args, "--json", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_pycni_gc_from_cri_removes_only_what_containerd_no_longer_knows(ctd, pods):
    """`pycni gc --dry-run --valid-from-cri` takes the valid list from containerd's ListPodSandbox: an
    attachment containerd does not know (an ADD made behind its back, as a crashed runtime leaves
    one) is listed, the live pods are not, and nothing changes; `pycni gc` then removes exactly it."""
    if ctd.session.plugin != "pycni":
        pytest.skip("`pycni gc` works on pycni networks; this run drives the reference plugins")
    conflist = json.loads((ctd.dir / "net.d" / "10-pycni.conflist").read_text())
    plugin = dict(conflist["plugins"][0], cniVersion=conflist["cniVersion"], name=conflist["name"])
    leak = ctd.session.new_node("pycnirt-leak")
    leaked_id = "leaked-" + leak.name
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": leaked_id, "CNI_NETNS": leak.path, "CNI_IFNAME": "eth0",
           "CNI_PATH": str(ctd.session.bin_dir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYCNI_NO_DAEMON": "1"}
    add = subprocess.run(ctd.node.argv(str(ctd.session.bin_dir / "pycni")), input=json.dumps(plugin), env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert add.returncode == 0, add.stdout + add.stderr
    leaked_ip = json.loads(add.stdout)["ips"][0]["address"].split("/")[0]
    try:
        common = ["--valid-from-cri", str(ctd.ctd.socket), "--conf-dir", str(ctd.dir / "net.d"),
                  "--cni-path", str(ctd.session.bin_dir), "--no-daemon"]
        held = _pycni_cmd(ctd, "leases", "--conf-dir", str(ctd.dir / "net.d"))["leases"]
        assert {row["address"] for row in held} == {p.ip for p in pods} | {leaked_ip}
        assert all(row["vethExists"] for row in held), held
        preview = _pycni_cmd(ctd, "gc", "--dry-run", *common)
        (net,) = preview["networks"]
        assert [x["containerID"] for x in net["leases"]] == [leaked_id]
        assert [x["containerID"] for x in net["veths"]] == [leaked_id]
        assert (ctd.data_dir / NETWORK / leaked_ip).exists(), "--dry-run removed the lease"
        done = _pycni_cmd(ctd, "gc", *common)
        (net,) = done["networks"]
        assert [x["address"] for x in net["leases"]] == [leaked_ip] and len(net["veths"]) == 1
        assert net["left"] == {"leases": [], "veths": []}
        assert not (ctd.data_dir / NETWORK / leaked_ip).exists()
        assert {row["address"] for row in _pycni_cmd(ctd, "leases", "--conf-dir", str(ctd.dir / "net.d"))["leases"]} \
            == {p.ip for p in pods}
        assert ping(pods[1].netns, pods[0].ip), "GC broke a live pod"
    finally:
        leak.delete()


def test_stop_and_remove_leave_nothing_behind(ctd, pods):
    needles = []
    netns_files = [p.netns for p in pods]
    for pod in list(pods):
        needles += [pod.ip, pod.id]
        ctd.cri.stop_and_remove(pod)
        ctd.removed_ids.append(pod.id)
        pods.remove(pod)
    assert ctd.cri.sandboxes() == []
    after = assert_node_clean(ctd.node, ctd.data_dir, ctd.baseline, needles, netns_files)
    results = Path("/var/lib/cni/results")
    cached = [f.name for f in results.glob("*")] if results.is_dir() else []
    assert not [f for f in cached if any(i in f for i in ctd.removed_ids)], f"CNI result cache left: {cached}"
    # no shim, no pod process: only containerd is left in the node namespace
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not set(pids_in_netns({ctd.node.inode})) - {ctd.ctd.daemon.pid}, "shims gone",
                 timeout=5, interval=0.1)
    others = set(pids_in_netns({ctd.node.inode})) - {ctd.ctd.daemon.pid}
    assert not others, f"processes left in the node namespace: {others}"
    log("after teardown, infrastructure kept in the node: " + ", ".join(
        r for r in after["iptables"] if r not in ctd.baseline["iptables"] and r.startswith(":")))
