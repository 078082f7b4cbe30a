"""A run's scratch directory, its ledger, and the sweep that removes everything the run made.

Everything lives under one directory /tmp/<prefix>-XXXX (daemons' state, sockets, logs). What has to live
elsewhere is recorded in the directory's ledger (`owned.txt`, one "<kind> <value>" a line) the moment it exists:

    pid <n>        the process that owns the run (a run whose owner is gone is reaped by the next one)
    netns <name>   a namespace in /var/run/netns (ours, or one a runtime made for our containers)
    cgroup <path>  a cgroup parent (e.g. /pycnirt-ab12cd), removed in every hierarchy, children first
    rundir <path>  a directory a runtime made outside the scratch dir, removed once empty
    dockerd <name> a dockerd.sh instance (its own namespace, run dir, cgroups), stopped with `dockerd.sh stop`

`Scratch.sweep()` removes what the runtimes left behind: processes in one of our namespaces (shims, conmon, pod
processes: nothing else can be in a namespace we created), the namespaces, containerd's shim sockets, mounts
under the scratch dir, cgroups, run dirs. `reap_stale(prefix)` does the same for an earlier run of the same
suite that was SIGKILLed (no finalizer, no atexit).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cleanup import Cleanup, log
from .dockerd import stop_instance
from .netns import NETNS_DIR
from .processes import cmdline, kill_all_in, netns_id, pid_alive, pids_in_netns

CGROUP_ROOT = Path("/sys/fs/cgroup")
LEDGER = "owned.txt"
SHIM_SOCKET_DIR = Path("/run/containerd/s")
REPO = Path(__file__).resolve().parents[2]


def mounts_under(prefix: str | Path) -> list[str]:
    """Mount points at or below `prefix`."""
    prefix = str(prefix).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                out.append(mnt)
    return out


def unmount_under(prefix: str | Path) -> list[str]:
    """Unmount everything mounted at or below `prefix`, deepest first (lazily when busy); what was mounted."""
    found = mounts_under(prefix)
    for mnt in sorted(set(found), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    return found


def remove_cgroup(parent: str) -> None:
    """rmdir the cgroup `parent` (e.g. "/pycnirt-ab12cd") in every v1 hierarchy (or v2), children first."""
    rel = parent.strip("/")
    if not rel or not CGROUP_ROOT.is_dir():
        return
    for base in [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())]:
        top = base / rel
        if not top.is_dir() or top.is_symlink():
            continue
        for d in sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def cgroup_exists(parent: str) -> bool:
    rel = parent.strip("/")
    return bool(rel) and CGROUP_ROOT.is_dir() and any(
        (base / rel).is_dir() for base in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if base.is_dir())


def shim_sockets(scratch: Path) -> list[Path]:
    """containerd 1.6 puts each shim's socket at /run/containerd/s/<sha256(<grpc address>/<ns>/<id>)>
    whatever its state dir (runtime/v2/shim/util_unix.go SocketAddress); the tasks it ran are the
    directories <state>/io.containerd.runtime.v2.task/<ns>/<id>. A shim killed outright leaves its socket."""
    out = []
    for sock in scratch.rglob("containerd.sock"):
        for task in sock.parent.glob("state/io.containerd.runtime.v2.task/*/*"):
            digest = hashlib.sha256(f"{sock}/{task.parent.name}/{task.name}".encode()).hexdigest()
            out.append(SHIM_SOCKET_DIR / digest)
    return out


def read_ledger(scratch: str | Path) -> list[tuple[str, str]]:
    try:
        text = (Path(scratch) / LEDGER).read_text()
    except OSError:
        return []
    return [tuple(line.split(" ", 1)) for line in text.splitlines() if " " in line]


def sweep(scratch: Path) -> list[str]:
    """Remove what the run in `scratch` left behind, as listed in its ledger or found under it; returns a
    description of every leftover found."""
    leftovers: list[str] = []
    ledger = read_ledger(scratch)
    for kind, value in ledger:
        if kind == "dockerd" and stop_instance(value):
            leftovers.append(f"dockerd instance {value}")
    names = [v for k, v in ledger if k == "netns" and (NETNS_DIR / v).exists()]
    paths = [str(NETNS_DIR / n) for n in names]
    with contextlib.suppress(OSError):
        paths += [str(p) for p in scratch.rglob("netns/*")]
    ids = {i for i in (netns_id(p) for p in paths) if i is not None}
    sockets = shim_sockets(scratch)  # before the kill: task directories go with their shims
    leftovers += [f"process {pid} {cmdline(pid)}" for pid in pids_in_netns(ids)]
    kill_all_in(ids)
    for name in names:
        leftovers.append(f"netns {NETNS_DIR / name}")
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for sock in sockets:
        if sock.exists():
            leftovers.append(f"shim socket {sock}")
            sock.unlink(missing_ok=True)
    for mnt in unmount_under(scratch):
        leftovers.append(f"mount {mnt}")
    for kind, value in ledger:
        if kind == "cgroup":
            remove_cgroup(value)
        elif kind == "rundir":
            with contextlib.suppress(OSError):
                Path(value).rmdir()
    return leftovers


def copy_logs(scratch: Path, dest: Path) -> None:
    """Keep the last run's logs (*.log in the scratch dir and one level below) in `dest` (build/<suite>-logs)."""
    try:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for f in list(scratch.glob("*.log")) + list(scratch.glob("*/*.log")):
            if f.is_file() and f.stat().st_size < 20_000_000:
                shutil.copy(f, dest / (f.name if f.parent == scratch else f"{f.parent.name}-{f.name}"))
    except OSError as exc:
        log(f"could not copy logs: {exc}")


def remove_tree(scratch: Path) -> bool:
    """rm -rf the scratch dir unless something is still mounted below it (then say so)."""
    if mounts_under(scratch):
        log(f"NOT removing {scratch}: still mounted: {mounts_under(scratch)}")
        return False
    subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], capture_output=True, check=False)
    return True


class Scratch:
    """/tmp/<prefix>-XXXX, owned by this process, swept and removed by `cleanup` (registered first, so it
    runs after every other undo action); the logs are kept in build/<logs>."""

    def __init__(self, prefix: str, cleanup: Cleanup, logs: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
        os.chmod(self.path, 0o755)
        self.id = self.path.name[len(prefix) + 1:]
        self.log_copy = REPO / "build" / logs
        self.record("pid", str(os.getpid()))
        cleanup.add(f"scratch {self.path}", self.remove)

    def record(self, kind: str, value: str) -> None:
        with open(self.path / LEDGER, "a") as f:
            f.write(f"{kind} {value}\n")

    def recorded(self, kind: str) -> list[str]:
        return [v for k, v in read_ledger(self.path) if k == kind]

    def remove(self) -> None:
        for item in sweep(self.path):
            log(f"swept leftover: {item}")
        copy_logs(self.path, self.log_copy)
        remove_tree(self.path)


def preflight(prefix: str, missing: list[str]) -> str | None:
    """Before a suite starts: why it cannot run here (not root, `missing` programs or files), or None once
    the leftovers of its earlier SIGKILLed runs are reaped."""
    if os.geteuid() != 0:
        return "needs root"
    if missing:
        return f"missing: {', '.join(missing)} (make deps; make venv)"
    for item in reap_stale(prefix):
        log(f"reaped a killed earlier run: {item}")
    return None


def reap_stale(prefix: str, tmp: Path = Path("/tmp")) -> list[str]:
    """Remove what earlier runs of a suite killed outright left: their scratch dirs whose owning PID is gone,
    and everything their ledgers list."""
    reaped = []
    for scratch in tmp.glob(f"{prefix}-*"):
        owner = [int(v) for k, v in read_ledger(scratch) if k == "pid"]
        if not owner or pid_alive(owner[0]):
            continue
        left = sweep(scratch)
        remove_tree(scratch)
        reaped.append(f"{scratch}: {len(left)} leftovers")
    return reaped
