"""Node network namespaces: daemons, plugins and clients run here, never in the root namespace.

A `Node` is made with `ip netns add`; commands run in it with `nsenter --net=/var/run/netns/<node>` (never
`ip netns exec`, which remounts /sys and hides the cgroup v1 hierarchy from runc). It is registered for
cleanup (and in the scratch ledger) the moment it exists; deleting it kills what still runs inside (nothing
else can be in a namespace we created) and is idempotent.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from .cleanup import Cleanup, log
from .processes import CommandFailed, kill_all_in, netns_id, pids_in_netns, run

NETNS_DIR = Path("/var/run/netns")


def nsenter(path: str | Path, *cmd: str) -> list[str]:
    """The argv that runs `cmd` in the network namespace file `path` (nsenter execs it: same PID)."""
    return ["nsenter", f"--net={path}", "--", *cmd]


def in_netns(path: str | Path, *cmd: str, check: bool = False, timeout: float = 30, **kw
             ) -> subprocess.CompletedProcess:
    """Run a host command inside any network namespace file (a node's, a pod's, a client's)."""
    return run(nsenter(path, *cmd), check=check, timeout=timeout, **kw)


class Node:
    """A dedicated node network namespace, `lo` up and IPv4 forwarding on."""

    def __init__(self, prefix: str, cleanup: Cleanup, scratch=None) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.cleanup = cleanup
        if scratch is not None:
            scratch.record("netns", self.name)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        cleanup.add(f"netns {self.name}", self.delete)
        self.path = str(NETNS_DIR / self.name)
        self.inode = netns_id(self.path)
        self.deleted = False
        self.run("ip", "link", "set", "lo", "up")
        self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def argv(self, *cmd: str) -> list[str]:
        return nsenter(self.path, *cmd)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        try:
            return run(self.argv(*cmd), check=check, timeout=timeout, **kw)
        except CommandFailed as exc:
            raise RuntimeError(f"in {self.name}: {exc}") from None

    def pids(self) -> list[int]:
        return pids_in_netns({self.inode}) if self.inode and not self.deleted else []

    def delete(self) -> None:
        """Kill what still runs in the namespace, then delete it. A deleted node never looks for processes
        again (its inode number may already belong to another namespace)."""
        if self.deleted:
            return
        self.deleted = True
        inode = netns_id(self.path)
        if inode is None:
            return
        for pid in pids_in_netns({inode}):
            log(f"killing PID {pid} left in {self.name}")
        kill_all_in({inode})
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def link_client(node: Node, client_prefix: str, node_cidr: str, client_cidr: str, scratch=None) -> Node:
    """A second namespace wired to the node by a veth pair: a 'remote' client of the node's address."""
    client = Node(client_prefix, node.cleanup, scratch)
    a, b = f"n{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    node.run("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", client.path)
    node.run("ip", "addr", "add", node_cidr, "dev", a)
    node.run("ip", "link", "set", a, "up")
    client.run("ip", "addr", "add", client_cidr, "dev", b)
    client.run("ip", "link", "set", b, "up")
    client.run("ip", "route", "add", "default", "via", node_cidr.split("/")[0])
    return client


_HTTP_GET = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=float(sys.argv[3])) as s:
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: " + host.encode() + b"\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
sys.stdout.write(data.decode(errors="replace"))
"""


def http_get(netns: str | Path, host: str, port: int, timeout: float = 5) -> str:
    """One HTTP/1.0 GET from inside a network namespace (busybox-static's wget segfaults in glibc NSS);
    returns the whole response, or the error text."""
    proc = in_netns(netns, sys.executable, "-I", "-c", _HTTP_GET, host, str(port), str(timeout),
                    timeout=timeout + 10)
    return proc.stdout + proc.stderr
