"""Who is calling: the daemon's caller as the kernel knows it, never as the request describes it.

A request makes the daemon create interfaces, write the lease store and exec CNI plugins with the
daemon's privileges, in the paths and namespaces the request names. So the daemon serves a peer only
when the peer could have done exactly the same standalone, in exactly the same view of the node:

  * uid 0 (SO_PEERCRED, translated into the daemon's user namespace by the kernel);
  * every capability of the daemon's effective set in the peer's effective set (/proc/<pid>/status
    CapEff): a root process that dropped CAP_NET_ADMIN or CAP_SYS_ADMIN gets EPERM standalone, and
    must not get the daemon's capabilities by asking it;
  * the same user, mount, network, PID and time namespaces (/proc/<pid>/ns/*): CNI_NETNS, dataDir,
    CNI_PATH and every other path resolve in the mount namespace, "the node" is the network namespace,
    /proc/<pid>/ns/net names a process of the PID namespace, capabilities count in the user namespace
    and the request's deadline is on the time namespace's CLOCK_MONOTONIC.

Anything else is refused, and the client runs the verb itself, with its own privileges and in its
own view - so a refusal is never an error, only the slower path. docs/security.md has the whole model.

The peer's /proc directory is opened once and everything is read through that descriptor; a pidfd
(SO_PEERPIDFD, Linux 6.5+; pidfd_open otherwise) then proves that the process we read is still the
one that connected, so a recycled PID cannot lend its namespaces or capabilities to a caller.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from dataclasses import dataclass

from .wire import Refused

NAMESPACES = ("user", "mnt", "net", "pid", "time")
SO_PEERPIDFD = 77  # <asm-generic/socket.h>, Linux 6.5

# capability(7) numbers, for readable refusals
CAPABILITY_NAMES = {
    0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 2: "CAP_DAC_READ_SEARCH", 3: "CAP_FOWNER", 4: "CAP_FSETID",
    5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID", 8: "CAP_SETPCAP", 9: "CAP_LINUX_IMMUTABLE",
    10: "CAP_NET_BIND_SERVICE", 11: "CAP_NET_BROADCAST", 12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW",
    14: "CAP_IPC_LOCK", 15: "CAP_IPC_OWNER", 16: "CAP_SYS_MODULE", 17: "CAP_SYS_RAWIO", 18: "CAP_SYS_CHROOT",
    19: "CAP_SYS_PTRACE", 20: "CAP_SYS_PACCT", 21: "CAP_SYS_ADMIN", 22: "CAP_SYS_BOOT", 23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE", 25: "CAP_SYS_TIME", 26: "CAP_SYS_TTY_CONFIG", 27: "CAP_MKNOD", 28: "CAP_LEASE",
    29: "CAP_AUDIT_WRITE", 30: "CAP_AUDIT_CONTROL", 31: "CAP_SETFCAP", 32: "CAP_MAC_OVERRIDE",
    33: "CAP_MAC_ADMIN", 34: "CAP_SYSLOG", 35: "CAP_WAKE_ALARM", 36: "CAP_BLOCK_SUSPEND", 37: "CAP_AUDIT_READ",
    38: "CAP_PERFMON", 39: "CAP_BPF", 40: "CAP_CHECKPOINT_RESTORE",
}


@dataclass(frozen=True)
class View:
    """A process's namespaces (kind -> (device, inode); absent kinds omitted) and effective capabilities."""

    namespaces: dict[str, tuple[int, int]]
    capabilities: int


def _read_view(proc_fd: int) -> View:
    namespaces = {}
    for kind in NAMESPACES:
        try:
            st = os.stat(f"ns/{kind}", dir_fd=proc_fd)
        except FileNotFoundError:
            continue  # a kernel without this namespace type (time: before 5.6)
        namespaces[kind] = (st.st_dev, st.st_ino)
    fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        text = os.read(fd, 1 << 16).decode("ascii", "replace")
    finally:
        os.close(fd)
    caps = next((line.split()[1] for line in text.splitlines() if line.startswith("CapEff:")), None)
    if caps is None:
        raise OSError("no CapEff in status")
    return View(namespaces, int(caps, 16))


def own_view() -> View:
    """The daemon's own view (its main thread: request threads always return to it)."""
    fd = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _read_view(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    view: View


def _pidfd(conn: socket.socket, pid: int) -> int | None:
    try:
        return conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        pass
    try:
        return os.pidfd_open(pid)  # older kernels: opened after the fact (the PID could in theory be new)
    except (OSError, AttributeError):
        return None


def identify(conn: socket.socket) -> Peer:
    """The peer of `conn` as the kernel reports it; Refused when it cannot be known."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if pid <= 0:
        raise Refused("the peer's process is not visible in the daemon's PID namespace")
    pidfd = _pidfd(conn, pid)
    try:
        try:
            proc_fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise Refused(f"cannot look at the peer (pid {pid}): {exc.strerror}") from None
        try:
            view = _read_view(proc_fd)
        except OSError as exc:
            raise Refused(f"cannot read the peer's namespaces and capabilities (pid {pid}): {exc}") from None
        finally:
            os.close(proc_fd)
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, 0)  # still the process that connected: the PID was not reused
            except OSError:
                raise Refused(f"the peer (pid {pid}) exited") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return Peer(pid, uid, view)


def authorise(conn: socket.socket, own: View) -> Peer:
    """The peer, if it may use this daemon (module docstring); Refused with the reason otherwise."""
    peer = identify(conn)
    if peer.uid != 0:
        raise Refused(f"peer uid {peer.uid} is not root")
    missing = own.capabilities & ~peer.view.capabilities
    if missing:
        names = [CAPABILITY_NAMES.get(bit, f"cap {bit}") for bit in range(64) if missing >> bit & 1]
        raise Refused(f"the peer (pid {peer.pid}) lacks capabilities the daemon has: {', '.join(names)}")
    other = [kind for kind in NAMESPACES if own.namespaces.get(kind) != peer.view.namespaces.get(kind)]
    if other:
        raise Refused(f"the peer (pid {peer.pid}) runs in other {'/'.join(other)} namespaces than the daemon")
    return peer
