"""Network namespace switching: open a netns path safely and run the calling thread inside it.

The plugin runs in the host ("node") network namespace. Pod-side work happens inside `Pod(path)`,
which moves the calling thread into the pod netns with setns(2) (so /proc/sys/net and a netlink
socket opened there belong to the pod) and moves it back on exit; setns is per thread, so the
daemon's other requests stay where they are. The pod's netns fd stays open for the object's
lifetime: `links.create_veth` creates the veth peer directly inside the pod netns with it
(IFLA_NET_NS_FD in the peer's attributes), because moving an interface between namespaces
afterwards costs ~20 ms of kernel time per attach.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Self

from ..spec.errors import INVALID_ENV, CNIError
from . import netlink

CLONE_NEWNET = 0x40000000

_libc: Any = None


class NetnsGone(Exception):
    """The namespace path does not exist (any more)."""


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


NS_GET_NSTYPE = 0xB703  # ioctl_ns(2): _IO(0xb7, 0x3)


def open_netns(path: str) -> int:
    """An O_RDONLY fd of a netns path; NetnsGone if it does not exist, code 4 if it is not a network
    namespace (a regular file, a directory, another kind of namespace...) - checked before anything
    is created. O_NONBLOCK: a FIFO given as CNI_NETNS must not block the plugin."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise NetnsGone(path) from None
    except OSError as exc:
        raise CNIError(INVALID_ENV, f"failed to open netns {path!r}", exc.strerror or str(exc)) from None
    try:
        import fcntl

        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise CNIError(INVALID_ENV, f"CNI_NETNS {path!r} is not a network namespace")
    return fd


class Pod:
    """Inside a pod netns: `with Pod(path) as pod: pod.nl...` (thread switched back on exit).

    `pod.nl` (netlink.Handles) may be used inside `with` only: its sockets are opened there, on first
    use, so they belong to the pod; they stay open across the `with` blocks of one verb, like the netns
    fd (used as IFLA_NET_NS_FD), until `close()`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_netns(path)
        self._nl: netlink.Handles | None = None
        self._inside = False
        self._home = -1

    @property
    def nl(self) -> netlink.Handles:
        if not self._inside or self._nl is None:
            raise RuntimeError(f"{self.path}: the pod's netlink handles are used outside `with pod`")
        return self._nl

    def __enter__(self) -> Self:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.fd)
        except OSError as exc:
            os.close(self._home)
            raise CNIError(INVALID_ENV, f"{self.path!r} is not a network namespace", str(exc)) from None
        if self._nl is None:
            self._nl = netlink.Handles()
        self._inside = True
        return self

    def _leave(self) -> None:
        try:
            _setns(self._home)  # if this fails the process must not go on in the wrong netns
        finally:
            os.close(self._home)

    def __exit__(self, *exc: object) -> None:
        self._inside = False
        self._leave()

    def is_own(self) -> bool:
        """Whether this is the namespace the calling thread is in (the node's, for the plugin)."""
        here = os.stat("/proc/thread-self/ns/net")
        mine = os.fstat(self.fd)
        return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)

    def close(self) -> None:
        handles, self._nl = self._nl, None
        try:
            if handles is not None:
                handles.close()
        finally:
            os.close(self.fd)
