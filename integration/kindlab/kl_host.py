"""The host side of the local kind-style cluster: a scratch directory, a dedicated network namespace, and
a `dockerd` confined to it - started by PID, stopped by PID - plus a cleanup that cannot be skipped.

Network safety: dockerd (and the containerd it manages, and every node container) lives in the network
namespace created here (`nsenter --net=...`, never `ip netns exec`, which remounts /sys and breaks
runc). Its bridges, veths and iptables rules exist only in that namespace, which has nothing but
`lo` and what docker creates: no packet can leave it. The root namespace is never touched.

Everything lives under one scratch directory /tmp/pycnikl-XXXX (data-root, exec-root, pidfile, socket,
node socket dirs, the nodes file). A ledger file there records what exists; a later run reaps what a
SIGKILLed run left (`reap_stale`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SCRATCH_PREFIX = "pycnikl-"


def log(msg: str) -> None:
    print(f"[kindlab] {msg}", flush=True)


class Cleanup:
    """Undo actions, newest first; each runs once, errors never stop the others."""

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
            except Exception as exc:  # noqa: BLE001 - remove everything we can
                self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
                log(f"cleanup of {what} failed: {exc}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM one process we started (by its PID), SIGKILL after `timeout`."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    log(f"pid {pid} ignored SIGTERM for {timeout}s: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(ns_path: str) -> list[int]:
    """Processes whose network namespace is `ns_path` (a namespace we created: they are all ours)."""
    want = _ns_id(ns_path)
    if want is None:
        return []
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid() and _ns_id(f"/proc/{d}/ns/net") == want:
            out.append(int(d))
    return out


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def remove_host_paths(paths: list[Path]) -> None:
    """Remove host files/dirs (dirs only if empty) a run's dockerd created, unless a dockerd is running."""
    others = [p for p in os.listdir("/proc") if p.isdigit() and _comm(p) == "dockerd"]
    if others:
        log(f"another dockerd is running ({others}): leaving {[str(p) for p in paths]}")
        return
    for path in paths:
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


def mounts_under(prefix: str) -> list[str]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                out.append(mp)
    return out


def remove_cgroup_tree(name: str) -> None:
    """rmdir (depth first) every cgroup directory named /<name> under each v1 controller (or v2)."""
    for base in [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())] if CGROUP_ROOT.exists() else []:
        top = base / name.strip("/")
        if not top.is_dir() or top.is_symlink():
            continue
        for root, dirs, _ in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, d))
        with contextlib.suppress(OSError):
            top.rmdir()


class Ledger:
    def __init__(self, scratch: Path) -> None:
        self.path = scratch / "ledger.json"

    def write(self, **kw) -> None:
        data = self.read()
        data.update(kw)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.rename(self.path)

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


class DockerHost:
    """dockerd inside its own network namespace, with its own data-root/exec-root/pidfile/socket."""

    def __init__(self, cleanup: Cleanup, bip: str = "10.249.0.1/24") -> None:
        self.cleanup = cleanup
        self.scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir="/tmp"))
        os.chmod(self.scratch, 0o755)
        self.id = self.scratch.name[len(SCRATCH_PREFIX):]
        self.netns = f"pycnikl-{self.id}"
        self.cgroup_parent = f"/pycnikl-{self.id}"
        self.docker_dir = self.scratch / "docker"
        self.sock = self.docker_dir / "docker.sock"
        self.pidfile = self.docker_dir / "dockerd.pid"
        self.log_path = self.scratch / "dockerd.log"
        self.bip = bip
        self.pid: int | None = None
        self.created_host_paths: list[Path] = []
        self.ledger = Ledger(self.scratch)
        self.ledger.write(owner_pid=os.getpid(), netns=self.netns, cgroup=self.cgroup_parent)
        cleanup.add(f"scratch {self.scratch}", self._remove_scratch)
        cleanup.add(f"cgroups {self.cgroup_parent}", lambda: remove_cgroup_tree(self.cgroup_parent))
        cleanup.add(f"netns {self.netns}", self._delete_netns)

    @property
    def ns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def nsenter(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net={self.ns_path}", "--", *cmd]

    # dockerd 20.10 always writes these host paths, whatever its data/exec roots (no flag moves them), and
    # containerd's runc shims put their sockets in /run/containerd/s: removed afterwards (directories only
    # when empty) when this run created them and no other dockerd is running.
    HOST_LEFTOVERS = (Path("/etc/docker/key.json"), Path("/run/docker/plugins"), Path("/run/docker"),
                      Path("/run/containerd/s"), Path("/run/containerd"))

    def _remove_host_leftovers(self, created: list[Path]) -> None:
        remove_host_paths(created)

    def start(self, timeout: float = 40.0) -> None:
        created = self.created_host_paths = [p for p in self.HOST_LEFTOVERS if not p.exists()]
        self.ledger.write(host_paths=[str(p) for p in created])
        self.cleanup.add("dockerd's host files", lambda: self._remove_host_leftovers(created))
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(self.nsenter("ip", "link", "set", "lo", "up"), check=True)
        self.docker_dir.mkdir()
        config = self.docker_dir / "daemon.json"
        # No registry is reachable (and none is wanted): images come from `docker import` only.
        config.write_text(json.dumps({"registry-mirrors": [], "features": {"buildkit": False}}))
        argv = self.nsenter(
            "dockerd", "--config-file", str(config),
            "--data-root", str(self.docker_dir / "root"), "--exec-root", str(self.docker_dir / "exec"),
            "--pidfile", str(self.pidfile), "-H", self.url, "--bip", self.bip,
            "--userland-proxy=false", "--log-level", "warn", "--cgroup-parent", self.cgroup_parent)
        with open(self.log_path, "ab") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.pid = proc.pid  # nsenter execs dockerd: this PID is dockerd's own
        self.ledger.write(dockerd_pid=self.pid)
        self.cleanup.add(f"dockerd pid {self.pid}", self.stop)
        import docker

        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                client = docker.DockerClient(base_url=self.url, timeout=120)
                client.ping()
                self.client = client
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd not answering after {timeout}s: "
                                       f"{self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.pid is not None:
            kill_pid(self.pid, timeout=30)
            self.pid = None

    def _delete_netns(self) -> None:
        if not os.path.exists(self.ns_path):
            return
        for pid in pids_in_netns(self.ns_path):  # shims, pods: anything left in *our* namespace
            log(f"killing leftover pid {pid} in {self.netns}")
            kill_pid(pid, timeout=5)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def _remove_scratch(self) -> None:
        left = mounts_under(str(self.scratch))
        for mp in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        if mounts_under(str(self.scratch)):
            raise RuntimeError(f"still mounted under {self.scratch}: {mounts_under(str(self.scratch))}")
        copy_logs(self.scratch)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.scratch)], capture_output=True, check=False)


LOG_COPY = Path(__file__).resolve().parents[2] / "build" / "kindlab-logs"


def copy_logs(scratch: Path) -> None:
    """Keep the last run's logs (dockerd, node logs written by the harness) in build/kindlab-logs."""
    try:
        shutil.rmtree(LOG_COPY, ignore_errors=True)
        LOG_COPY.mkdir(parents=True)
        for f in scratch.glob("*.log"):
            if f.is_file() and f.stat().st_size < 20_000_000:
                shutil.copy(f, LOG_COPY / f.name)
    except OSError as exc:
        log(f"could not copy logs: {exc}")


def reap_stale() -> list[str]:
    """Remove what an earlier, killed run left: its dockerd (by the PID it recorded), namespace,
    cgroups and scratch directory. Only runs whose owner process is gone are touched."""
    done = []
    for d in glob.glob(f"/tmp/{SCRATCH_PREFIX}*"):
        ledger = Ledger(Path(d)).read()
        owner = ledger.get("owner_pid")
        if not ledger or (owner and pid_alive(int(owner)) and int(owner) != os.getpid()):
            continue
        pid = ledger.get("dockerd_pid")
        if pid and pid_alive(int(pid)):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                comm = ""
            if comm == "dockerd":
                kill_pid(int(pid), timeout=30)
        ns = ledger.get("netns")
        if ns and (NETNS_DIR / ns).exists():
            for p in pids_in_netns(str(NETNS_DIR / ns)):
                kill_pid(p, timeout=5)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for mp in sorted(mounts_under(d), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        if ledger.get("cgroup"):
            remove_cgroup_tree(ledger["cgroup"])
        if ledger.get("host_paths"):
            remove_host_paths([Path(p) for p in ledger["host_paths"]])
        if not mounts_under(d):
            subprocess.run(["rm", "-rf", "--one-file-system", d], capture_output=True, check=False)
        done.append(d)
    return done


def new_id() -> str:
    return uuid.uuid4().hex[:6]
