"""Helpers shared by the bridge tests (no tests here).

`Env` drives plugins inside one node namespace: every plugin run goes through
conftest.exec_plugin(..., node=...), every pod is a namespace created through the `netns`
fixture (deleted afterwards), IPAM state lives under the test's tmp_path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import reliability
from conftest import REFERENCE_DIR, VENV_BIN, Namespaces, PluginRun, exec_plugin, in_ns

ROOT = Path(__file__).resolve().parents[2]
CNI_PATH = f"{VENV_BIN}:{REFERENCE_DIR}"

def ns_path(name: str) -> str:
    return Namespaces.path(name)


@dataclass
class Pod:
    name: str
    path: str
    cid: str
    ifname: str = "eth0"


class Env:
    def __init__(self, netns: Namespaces, node: str, tmp_path: Path) -> None:
        self.netns = netns
        self.node = node
        self.tmp = tmp_path
        self.ipam_dir = tmp_path / "ipam"
        self._count = 0
        # where delegated and reference plugins come from (test_bridge_interop: either reference)
        self.reference_dir = REFERENCE_DIR
        self.cni_path = CNI_PATH

    # -- configuration ----------------------------------------------------------------------------
    def conf(self, version: str = "1.0.0", subnet: str | None = "10.77.0.0/24", ipam_type: str = "host-local",
             ranges: list | None = None, **keys) -> dict:
        conf = {"cniVersion": version, "name": "testnet", "type": "pycni", "bridge": "cni0",
                "isGateway": True}
        if ranges is None and subnet is not None:
            ranges = [[{"subnet": subnet}]]
        if ranges is not None:
            conf["ipam"] = {"type": ipam_type, "dataDir": str(self.ipam_dir), "ranges": ranges}
        conf.update(keys)
        return {k: v for k, v in conf.items() if v is not None}

    # -- pods -------------------------------------------------------------------------------------
    def pod(self, ifname: str = "eth0") -> Pod:
        self._count += 1
        name = self.netns.create("pycnit-pod")
        return Pod(name, ns_path(name), f"ctr{self._count}-{name[-8:]}", ifname)

    # -- plugin runs ------------------------------------------------------------------------------
    def run(self, command: str, conf: dict, pod: Pod | None, *, plugin: str = "pycni", netns: str | None = "",
            **kw) -> PluginRun:
        if netns == "":
            netns = pod.path if pod else None
        if not (VENV_BIN / plugin).exists():
            plugin = str(self.reference_dir / plugin)
        return exec_plugin(plugin, command, conf, container_id=pod.cid if pod else None, netns=netns,
                           ifname=pod.ifname if pod else None, path=kw.pop("path", self.cni_path), node=self.node,
                           **kw)

    def add(self, conf: dict, pod: Pod, **kw) -> dict:
        res = self.run("ADD", conf, pod, **kw)
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert res.documents == 1
        return res.json

    def delete(self, conf: dict, pod: Pod, **kw) -> PluginRun:
        res = self.run("DEL", conf, pod, **kw)
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert res.stdout.strip() == ""
        return res

    # -- observation ------------------------------------------------------------------------------
    def node_cmd(self, *cmd: str, check: bool = True) -> str:
        return in_ns(self.node, *cmd, check=check).stdout

    def pod_cmd(self, pod: Pod, *cmd: str, check: bool = True) -> str:
        return in_ns(pod.name, *cmd, check=check).stdout

    def links(self, ns: str | None = None) -> dict[str, dict]:
        out = json.loads(in_ns(ns or self.node, "ip", "-j", "-d", "link", "show").stdout)
        return {link["ifname"]: link for link in out}

    def addrs(self, ns: str, dev: str) -> list[str]:
        out = json.loads(in_ns(ns, "ip", "-j", "addr", "show", "dev", dev).stdout)
        return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link.get("addr_info", [])
                if a.get("scope") != "link"]

    def sysctl(self, ns: str, key: str) -> str:
        return in_ns(ns, "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()

    def leases(self, network: str = "testnet") -> list[str]:
        d = self.ipam_dir / network
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            try:
                out.append(str(ipaddress.ip_address(p.name)))
            except ValueError:
                continue  # lock, last_reserved_ip.N
        return sorted(out)

    def firewall(self) -> str:
        """The node's firewall state for before/after comparisons (see reliability.firewall)."""
        return reliability.firewall(self.node)

    def ping(self, target: str, ns: str | None = None) -> bool:
        flag = "-6" if ":" in target else "-4"
        proc = in_ns(ns or self.node, "ping", flag, "-c", "1", "-W", "2", target, check=False)
        return proc.returncode == 0


def veth_of(result: dict) -> str:
    return result["interfaces"][1]["name"]


def ips_of(result: dict, version: int = 4) -> list[str]:
    return [ip["address"] for ip in result.get("ips", []) if (":" in ip["address"]) == (version == 6)]


def start_tcp_server(ns: str, port: int, reply: str) -> subprocess.Popen:
    """A one-line TCP server in namespace `ns` that answers `reply` plus the peer address."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
        f"s.bind(('::', {port})); s.listen(8); print('ready', flush=True)\n"
        "while True:\n"
        "    c, a = s.accept()\n"
        f"    c.sendall(('{reply} ' + a[0].replace('::ffff:', '') + '\\n').encode()); c.close()\n"
    )
    proc = subprocess.Popen(["nsenter", f"--net={ns_path(ns)}", "--", "python3", "-c", code],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line
    return proc


def tcp_get(ns: str, host: str, port: int, timeout: float = 3) -> str:
    code = (
        "import socket,sys\n"
        f"c=socket.create_connection(({host!r}, {port}), timeout={timeout}); print(c.recv(200).decode().strip())"
    )
    proc = in_ns(ns, "python3", "-c", code, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else f"ERROR {proc.stderr.strip()[-200:]}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, 15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="session", autouse=True)
def bridge_run_dir_cleanup():
    """The plugin keeps its firewall lock in /run/pycni: remove it afterwards if the tests made it."""
    import shutil

    from pycni.bridge.masquerade import LOCK_DIR

    existed = os.path.exists(LOCK_DIR)
    yield
    if not existed:
        shutil.rmtree(LOCK_DIR, ignore_errors=True)
