"""pycni's rtnetlink plumbing: the netlink handle of the node namespace, the raw link lookup, errors.

Everything here is about talking to the kernel, not about what is asked of it (that is `links`):

- the pyroute2 handle of the namespace the plugin runs in ("node"): one per thread, opened lazily
  (`node()`), because the daemon serves requests concurrently; `close()` drops this thread's;
- pyroute2 is imported lazily, so VERSION, STATUS and a DEL whose links are already gone never pay
  its import cost;
- the one raw rtnetlink client (`raw_get_link`): RTM_GETLINK by name, decoded here into a `Link`,
  used for every link lookup (cheaper than pyroute2, which decodes every attribute) and by STATUS;
- `kernel(what)`: every netlink or OS failure becomes CNIError code 101 (pycni's "kernel operation
  failed", SPEC.md "Error": codes 100+ are plugin-specific) naming the object at fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..spec.errors import KERNEL, CNIError

# linux/if.h (pyroute2.netlink.rtnl.ifinfmsg has them too; a raw lookup must not import pyroute2)
IFF_UP = 0x1
IFF_PROMISC = 0x100

_host: threading.local = threading.local()  # .ipr: this thread's netlink socket in the node netns


@dataclass
class Link:
    name: str
    index: int
    mac: str = ""
    mtu: int = 0
    kind: str = ""
    master: int = 0
    peer_index: int = 0  # IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace)
    flags: int = 0
    alias: str = ""

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)


@contextlib.contextmanager
def kernel(what: str) -> Iterator[None]:
    """Turn a kernel failure (a NetlinkError or an OSError, see `errors`) into CNIError 101 naming
    what was being done. Anything else - a ValueError or TypeError is a bug of ours or of pyroute2 -
    goes on to the generic handler (code 100, "internal error", with a traceback in the log)."""
    try:
        yield
    except errors() as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
        detail = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
        raise CNIError(KERNEL, f"failed to {what}", detail or type(exc).__name__) from None


def iproute_class() -> Any:
    """pyroute2's IPRoute class (imported on first use, by its public name: the package's __init__
    imports the whole library, ~100 ms of a cold ADD - docs/performance.md)."""
    from pyroute2 import IPRoute

    return IPRoute


def iproute() -> Any:
    """A new pyroute2 IPRoute (a netlink socket in the calling thread's netns)."""
    return iproute_class()()


def errors() -> tuple[type[BaseException], ...]:
    """What the kernel answers a failed request with: pyroute2's NetlinkError (not an OSError: it
    carries the errno in `code`) and OSError (the socket itself failed)."""
    from pyroute2 import NetlinkError

    return (NetlinkError, OSError)


def error_code(exc: BaseException) -> int:
    return int(getattr(exc, "code", 0) or getattr(exc, "errno", 0) or 0)


def node() -> Any:
    """The netlink socket of the namespace the plugin runs in (opened once per thread, lazily),
    with a raw rtnetlink socket opened at the same time, in the same namespace, for `get_link`."""
    ipr = getattr(_host, "ipr", None)
    if ipr is None:
        ipr = _host.ipr = iproute()
        _host.raw = raw_socket()
    return ipr


def close() -> None:
    """Close this thread's node netlink sockets (the daemon does after every request)."""
    ipr, raw = getattr(_host, "ipr", None), getattr(_host, "raw", None)
    _host.ipr = _host.raw = None
    if raw is not None:
        raw.close()
    if ipr is not None:
        with contextlib.suppress(*errors()):
            ipr.close()


def is_node(ipr: Any) -> bool:
    """Whether `ipr` is this thread's node handle (as opposed to a pod's, opened inside `netns.Pod`)."""
    return ipr is getattr(_host, "ipr", None)


def node_raw() -> Any:
    """This thread's raw rtnetlink socket in the node netns (opened with the node handle)."""
    node()
    return _host.raw


def link_from_msg(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else ""
    return Link(
        name=msg.get("IFLA_IFNAME"),
        index=msg["index"],
        mac=msg.get("IFLA_ADDRESS") or "",
        mtu=msg.get("IFLA_MTU") or 0,
        kind=kind or "",
        master=msg.get("IFLA_MASTER") or 0,
        peer_index=msg.get("IFLA_LINK") or 0,
        flags=msg["flags"],
        alias=msg.get("IFLA_IFALIAS") or "",
    )



# The raw client: uapi names (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h). pyroute2 has
# them too, but this path must not import it (STATUS and DEL stay cheap).
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK, _IFLA_MASTER, _IFLA_LINKINFO, _IFLA_IFALIAS = 1, 3, 4, 5, 10, 18, 20
_IFLA_INFO_KIND = 1
_NLMSGHDR = struct.Struct("IHHII")  # len, type, flags, seq, pid
_NLMSGERR = struct.Struct("i")  # the (negative) errno that follows the header of an NLMSG_ERROR
_IFINFOMSG = struct.Struct("BxHiII")  # family, type, index, flags, change
_NLATTR = struct.Struct("HH")  # len, type
_RECV_SIZE = 1 << 16


def raw_socket() -> Any:
    """A raw NETLINK_ROUTE socket in the calling thread's current network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.settimeout(10)
        sock.bind((0, 0))  # pid 0: the kernel assigns our port id; no multicast groups
    except OSError as exc:
        sock.close()
        raise CNIError(KERNEL, "rtnetlink is not reachable", str(exc)) from None
    return sock


def _align(n: int) -> int:
    return (n + 3) & ~3  # NLA_ALIGN / NLMSG_ALIGN: 4 bytes


def attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) netlink attributes in buf[start:end]."""
    while start + _NLATTR.size <= end:
        alen, atype = _NLATTR.unpack_from(buf, start)
        if alen < _NLATTR.size:
            return
        yield atype & _NLA_TYPE_MASK, buf[start + _NLATTR.size : start + alen]
        start += _align(alen)


def _attr(atype: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), atype) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _string(payload: bytes) -> str:
    return payload.rstrip(b"\0").decode(errors="replace")


_seq = 0


def raw_get_link(sock: Any, name: str) -> Link | None:
    """RTM_GETLINK by name; None when there is no such link (ENODEV)."""
    global _seq
    _seq = (_seq + 1) & 0x7FFFFFFF
    seq = _seq
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, name.encode() + b"\0")
    try:
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), _RTM_GETLINK, _NLM_F_REQUEST, seq, 0) + body)
        while True:  # skip a late answer to an earlier request on this socket
            data = sock.recv(_RECV_SIZE)
            length, mtype, _flags, got, _pid = _NLMSGHDR.unpack_from(data, 0)
            if got == seq:
                break
    except OSError as exc:
        raise CNIError(KERNEL, f"failed to look up link {name!r}", str(exc)) from None
    if mtype == _NLMSG_ERROR:
        (err,) = _NLMSGERR.unpack_from(data, _NLMSGHDR.size)
        if -err in (errno.ENODEV, errno.ENOENT):
            return None
        raise CNIError(KERNEL, f"failed to look up link {name!r}", os.strerror(-err))
    if mtype != _RTM_NEWLINK:
        raise CNIError(KERNEL, f"unexpected rtnetlink answer looking up {name!r}", f"type {mtype}")
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, _NLMSGHDR.size)
    link = Link(name="", index=index, flags=flags)
    for atype, payload in attrs(data, _NLMSGHDR.size + _IFINFOMSG.size, length):
        if atype == _IFLA_IFNAME:
            link.name = _string(payload)
        elif atype == _IFLA_ADDRESS:
            link.mac = ":".join(f"{b:02x}" for b in payload)
        elif atype == _IFLA_MTU:
            (link.mtu,) = struct.unpack_from("I", payload)
        elif atype == _IFLA_LINK:
            (link.peer_index,) = struct.unpack_from("i", payload)
        elif atype == _IFLA_MASTER:
            (link.master,) = struct.unpack_from("i", payload)
        elif atype == _IFLA_IFALIAS:
            link.alias = _string(payload)
        elif atype == _IFLA_LINKINFO:
            for itype, ipayload in attrs(payload, 0, len(payload)):
                if itype == _IFLA_INFO_KIND:
                    link.kind = _string(ipayload)
    return link
