"""Node network namespaces, daemons started by PID inside them, and a cleanup that cannot be skipped.

Everything a runtime test creates is registered here the moment it exists:

- `Node`: a network namespace made with `ip netns add`; commands run in it with
  `nsenter --net=/var/run/netns/<node>` (never `ip netns exec`, which remounts /sys and hides the cgroup
  v1 hierarchy from runc).
- `Daemon`: a long-running process (containerd) started through `nsenter --net=...`, which execs the
  program, so the PID we hold is the daemon's own; it is stopped by that PID and nothing else.
- `Cleanup`: a LIFO list of undo actions run by fixture finalizers and, as a safety net, at interpreter
  exit. `sweep()` then removes what the runtimes themselves left behind: processes living in one of our
  namespaces (shims, conmon, pod processes: nothing else can be in a namespace we created), mounts under
  our scratch directory, the namespaces and cgroups recorded in the scratch dir's ledger, shim sockets.
- `reap_stale()`: the same for the scratch dir of an earlier run whose pytest was SIGKILLed.
Namespaces are told apart by (device, inode) of their nsfs file, read when needed, never remembered:
the kernel recycles namespace inode numbers.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def log(msg: str) -> None:
    print(f"[runtimes] {msg}", flush=True)


class Cleanup:
    """Undo actions, run newest first; each runs once and its errors never stop the others."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, object]] = []
        self.errors: list[str] = []
        atexit.register(self.run_all)

    def add(self, what: str, fn) -> None:
        self._actions.append((what, fn))

    def run_all(self) -> None:
        while self._actions:
            what, fn = self._actions.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep going: the point is to remove everything we can
                self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
                log(f"cleanup of {what} failed: {exc}")


CLEANUP = Cleanup()


# -- processes -----------------------------------------------------------------------------------


# A namespace is identified by (device, inode) of its nsfs file: an inode number alone could also be
# that of a plain file (a namespace file whose bind mount is gone).
NsId = tuple[int, int]


def _netns_inode(pid: int | str) -> NsId | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
        return st.st_dev, st.st_ino
    except OSError:
        return None


def live_inode(path: str | Path) -> NsId | None:
    """The identity of a namespace file that exists now (never a remembered one: inodes are recycled),
    or None when `path` is not a mounted namespace."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_dev == NSFS_DEV else None


NSFS_DEV = os.stat("/proc/self/ns/net").st_dev


def pids_in_netns(inodes: set[NsId]) -> list[int]:
    """PIDs of every process whose network namespace is one of `inodes` (never our own)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _netns_inode(entry) in inodes:
            out.append(int(entry))
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Signal one PID; escalate to SIGKILL if it is still alive after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


# -- namespaces ----------------------------------------------------------------------------------


class Node:
    """A dedicated node network namespace. Daemons and plugins run here, never in the root namespace."""

    def __init__(self, prefix: str = "pycnirt", ledger: Path | None = None) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        if ledger is not None:
            ledger_add(ledger, "netns", self.name)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        CLEANUP.add(f"netns {self.name}", self.delete)
        self.path = str(NETNS_DIR / self.name)
        self.inode = live_inode(self.path)
        self.deleted = False
        self.run("ip", "link", "set", "lo", "up")
        self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def argv(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*cmd), check=False, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} in {self.name} failed ({proc.returncode}): "
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def delete(self) -> None:
        """Kill what still runs in the namespace, then delete it. Idempotent: namespace inode numbers
        are recycled, so a deleted node never looks for processes again."""
        if self.deleted:
            return
        self.deleted = True
        inode = live_inode(self.path)
        if inode is None:
            return
        for pid in pids_in_netns({inode}):
            log(f"killing PID {pid} left in {self.name}")
            kill_pid(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def in_netns(path: str, *cmd: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a host command inside any network namespace file (a pod's, a client's)."""
    proc = subprocess.run(["nsenter", f"--net={path}", "--", *cmd], check=False, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} in {path} failed: {proc.stdout}{proc.stderr}")
    return proc


def link_client(node: Node, client_prefix: str, node_cidr: str, client_cidr: str,
                ledger: Path | None = None) -> Node:
    """A second namespace wired to the node by a veth pair: a 'remote' client of the node's address."""
    client = Node(client_prefix, ledger)
    a, b = f"n{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    node.run("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", client.path)
    node.run("ip", "addr", "add", node_cidr, "dev", a)
    node.run("ip", "link", "set", a, "up")
    client.run("ip", "addr", "add", client_cidr, "dev", b)
    client.run("ip", "link", "set", b, "up")
    client.run("ip", "route", "add", "default", "via", node_cidr.split("/")[0])
    return client


# -- daemons -------------------------------------------------------------------------------------


class Daemon:
    """One long-running process in a node namespace, known and stopped by its PID."""

    def __init__(self, node: Node, argv: list[str], logfile: Path, env: dict | None = None) -> None:
        self.node, self.argv, self.logfile, self.env = node, argv, logfile, env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.logfile, "ab") as out:
            # nsenter (net only) execs the program: the PID is the daemon's own.
            self.proc = subprocess.Popen(self.node.argv(*self.argv), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        CLEANUP.add(f"daemon {self.argv[0]} pid {self.proc.pid}", self.stop)
        time.sleep(0.05)
        exe = os.path.basename(os.readlink(f"/proc/{self.pid}/exe")) if pid_alive(self.pid) else "?"
        log(f"started {self.argv[0]} as PID {self.pid} ({exe}) in {self.node.name}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        kill_pid(self.pid, sig, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        log(f"stopped PID {self.pid} (signal {int(sig)}), exit {self.proc.returncode}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# -- the sweep: what the runtimes left behind ----------------------------------------------------


def mounts_under(prefix: str) -> list[str]:
    prefix = prefix.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix):
                out.append(mnt)
    return out


def unmount_under(prefix: str) -> list[str]:
    """Unmount everything mounted under `prefix`, deepest first. Returns what had to be unmounted."""
    found = mounts_under(prefix)
    for mnt in sorted(set(found), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    return found


SHIM_SOCKET_DIR = Path("/run/containerd/s")


def shim_sockets(scratch: str) -> list[Path]:
    """containerd 1.6 puts each shim's socket at /run/containerd/s/<sha256(<grpc address>/<ns>/<id>)>
    whatever its state dir (runtime/v2/shim/util_unix.go SocketAddress); the tasks it ran are the
    directories <state>/io.containerd.runtime.v2.task/<ns>/<id>. A shim killed outright leaves its socket."""
    out = []
    for sock in Path(scratch).rglob("containerd.sock"):
        for task in sock.parent.glob("state/io.containerd.runtime.v2.task/*/*"):
            digest = hashlib.sha256(f"{sock}/{task.parent.name}/{task.name}".encode()).hexdigest()
            out.append(SHIM_SOCKET_DIR / digest)
    return out


def remove_cgroup(parent: str) -> None:
    """rmdir the cgroup `parent` (e.g. "/pycnirt-ab12cd") in every hierarchy, children first."""
    rel = parent.strip("/")
    if not rel or not CGROUP_ROOT.is_dir():
        return
    for hier in CGROUP_ROOT.iterdir():
        top = hier / rel
        if not top.is_dir():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
        for d in dirs:
            with contextlib.suppress(OSError):
                d.rmdir()


def read_ledger(scratch: str | Path) -> list[tuple[str, str]]:
    try:
        text = (Path(scratch) / LEDGER).read_text()
    except OSError:
        return []
    return [tuple(line.split(" ", 1)) for line in text.splitlines() if " " in line]


def ledger_netns(scratch: str | Path) -> list[str]:
    """The namespaces recorded in a scratch dir's ledger that still exist."""
    return [v for k, v in read_ledger(scratch) if k == "netns" and (NETNS_DIR / v).exists()]


def sweep(scratch: str) -> list[str]:
    """Remove what runtimes may have left behind, as listed in the scratch dir's ledger (our node and
    client namespaces, the namespaces podman made for our containers, our cgroup parent) or found under
    it (containerd's pod namespaces, mounts, shim sockets). Returns a description of every leftover."""
    leftovers: list[str] = []
    names = ledger_netns(scratch)
    paths = [str(NETNS_DIR / n) for n in names]
    with contextlib.suppress(OSError):
        paths += [str(p) for p in Path(scratch).rglob("netns/*")]
    inodes = {i for i in (live_inode(p) for p in paths) if i is not None}
    for pid in pids_in_netns(inodes):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            cmd = "?"
        leftovers.append(f"process {pid} {cmd}")
        kill_pid(pid, signal.SIGKILL)
    for name in names:
        leftovers.append(f"netns /var/run/netns/{name}")
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for sock in shim_sockets(scratch):
        if sock.exists():
            leftovers.append(f"shim socket {sock}")
            sock.unlink(missing_ok=True)
    for mnt in unmount_under(scratch):
        leftovers.append(f"mount {mnt}")
    for kind, value in read_ledger(scratch):
        if kind == "cgroup":
            remove_cgroup(value)
        elif kind == "rundir":  # a directory a runtime made outside scratch, removed once empty
            with contextlib.suppress(OSError):
                Path(value).rmdir()
    return leftovers


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


def http_get(netns: str, host: str, port: int, timeout: float = 5) -> str:
    """One HTTP/1.0 GET from inside a network namespace (busybox-static's wget segfaults in glibc NSS);
    returns the whole response, or the error text."""
    proc = in_netns(netns, sys.executable, "-I", "-c", _HTTP_GET, host, str(port), str(timeout),
                    timeout=timeout + 10)
    return proc.stdout + proc.stderr


# -- a run that was SIGKILLed: the next run removes what it left ----------------------------------

SCRATCH_GLOB = "pycnirt-*"
LEDGER = "owned.txt"  # in each scratch dir: "pid <n>", "netns <name>", "cgroup <path>", one a line


def ledger_add(scratch: Path, kind: str, value: str) -> None:
    with open(scratch / LEDGER, "a") as f:
        f.write(f"{kind} {value}\n")


def reap_stale(tmp: Path = Path("/tmp")) -> list[str]:
    """Remove what earlier runs killed outright (SIGKILL: no finalizer, no atexit) left: their scratch dirs
    whose owning PID is gone, the namespaces, processes, mounts and cgroups listed in them."""
    reaped = []
    for scratch in tmp.glob(SCRATCH_GLOB):
        owner = [int(v) for k, v in read_ledger(scratch) if k == "pid"]
        if not owner or pid_alive(owner[0]):
            continue
        left = sweep(str(scratch))
        if not mounts_under(str(scratch)):
            subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], capture_output=True, check=False)
        reaped.append(f"{scratch}: {len(left)} leftovers")
    return reaped
