"""Commands with a timeout, processes known by PID, and which processes live in a network namespace.

A namespace is identified by (device, inode) of its nsfs file, read when needed and never remembered: the
kernel recycles namespace inode numbers, and an inode number alone could also be a plain file's (a namespace
file whose bind mount is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .cleanup import log

NsId = tuple[int, int]
NSFS_DEV = os.stat("/proc/self/ns/net").st_dev


class CommandFailed(RuntimeError):
    def __init__(self, argv: list[str], proc: subprocess.CompletedProcess) -> None:
        self.argv, self.returncode = argv, proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        super().__init__(f"{' '.join(argv)} failed ({proc.returncode}): "
                         f"{(proc.stdout or '')[-2000:]}{(proc.stderr or '')[-2000:]}")


def run(argv: list[str], *, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command to completion (text output captured, `timeout` seconds at most); with `check`, a non-zero
    exit raises CommandFailed carrying both outputs."""
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode:
        raise CommandFailed(argv, proc)
    return proc


def missing(programs: list[str], files: list[str] = ()) -> list[str]:
    """What a suite needs and this machine lacks: programs not on PATH, files that do not exist."""
    return [p for p in programs if not shutil.which(p)] + [f for f in files if not os.path.exists(f)]


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def comm(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Signal one process we started (by its PID); SIGKILL when it is still alive after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    log(f"pid {pid} ({comm(pid)}) still alive {timeout:g}s after signal {int(sig)}: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.05)


def netns_id(path: str | Path) -> NsId | None:
    """The identity of a network namespace file that exists now, or None when `path` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_dev == NSFS_DEV else None


def pids_in_netns(ids: set[NsId]) -> list[int]:
    """PIDs of every process whose network namespace is one of `ids` (never our own process)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and netns_id(f"/proc/{entry}/ns/net") in ids:
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def kill_all_in(ids: set[NsId], rounds: int = 5) -> list[int]:
    """SIGKILL every process in the namespaces `ids` until none is left (a daemon being killed may still fork a
    child after the first look: containerd starting a shim); the PIDs killed."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = pids_in_netns(ids)
        if not pids:
            break
        for pid in pids:
            kill_pid(pid, signal.SIGKILL)
        killed += pids
    return killed
