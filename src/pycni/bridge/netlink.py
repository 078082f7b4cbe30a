"""pycni's rtnetlink plumbing: the netlink handles of a namespace, the channel, lookups, errors.

Everything here is about talking to the kernel, not about what is asked of it (that is `links`):

- `Handles`: the netlink sockets of one namespace, as an object its owner passes around - the
  verbs get the node's from the request's Context (a daemon worker thread keeps its handles for
  its whole life) or open their own for one request (`handles()`); `netns.Pod` has the pod's;
- `Channel`: the hot path. pyroute2's own message classes (ifinfmsg, ifaddrmsg, rtmsg: the bytes
  its IPRoute would send - tests/test_netlink_messages.py compares them with pyroute2's IPBatch)
  sent over one socket, the messages of one step in one datagram (the kernel runs them in order and
  acknowledges each), answers decoded only as far as a lookup needs (`get_link`, `addresses`).
  pyroute2's IPRoute costs ~1 ms of CPU to open and ~0.5 ms per call (request filters, an asyncio
  loop turned per call): it was most of the daemon's CPU per ADD. It is kept for the rare
  operations (bridge creation, VLANs, port flags, listing links and routes): `Handles.ipr`;
- pyroute2 is imported lazily, so VERSION, STATUS and a DEL whose links are already gone never pay
  its import cost;
- `kernel(what)`: every netlink or OS failure becomes CNIError code 101 (pycni's "kernel operation
  failed", SPEC.md "Error": codes 100+ are plugin-specific) naming the object at fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..spec.errors import KERNEL, CNIError

# linux/if.h (pyroute2.netlink.rtnl.ifinfmsg has them too; a lookup must not import pyroute2)
IFF_UP = 0x1
IFF_PROMISC = 0x100


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



# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x200, 0x400
CREATE = NLM_F_CREATE | NLM_F_EXCL  # what `ip ... add` and IPRoute's "add" ask for
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_NEWROUTE = 16, 17, 18, 20, 21, 22, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 1, 3, 4, 5, 10, 18, 20
IFLA_INFO_KIND = 1
IFA_ADDRESS, IFA_FLAGS = 1, 8
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLMSGHDR = struct.Struct("IHHII")  # len, type, flags, seq, pid
NLMSGERR = struct.Struct("i")  # the (negative) errno that follows the header of an NLMSG_ERROR
IFINFOMSG = struct.Struct("BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("BBBBI")  # family, prefixlen, flags, scope, index
NLATTR = struct.Struct("HH")  # len, type
RECV_SIZE = 1 << 16


def align(n: int) -> int:
    return (n + 3) & ~3  # NLA_ALIGN / NLMSG_ALIGN: 4 bytes


def raw_socket() -> Any:
    """A NETLINK_ROUTE socket in the calling thread's current network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.settimeout(10)
        sock.bind((0, 0))  # pid 0: the kernel assigns our port id; no multicast groups
    except OSError as exc:
        sock.close()
        raise CNIError(KERNEL, "rtnetlink is not reachable", str(exc)) from None
    return sock


def attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) of each netlink attribute in buf[start:end]."""
    while start + NLATTR.size <= end:
        alen, atype = NLATTR.unpack_from(buf, start)
        if alen < NLATTR.size:
            return
        yield atype & NLA_TYPE_MASK, buf[start + NLATTR.size : start + alen]
        start += align(alen)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence number, start, length) of each netlink message in one datagram."""
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, mtype, _flags, seq, _pid = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size:
            return
        yield mtype, seq, pos, length
        pos += align(length)


def frame(msg: Any, mtype: int, flags: int, seq: int) -> bytes:
    """A pyroute2 message encoded as a request of type `mtype` that asks for an acknowledgement."""
    header = msg["header"]
    header["type"], header["flags"], header["sequence_number"] = mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq
    msg.encode()
    return bytes(msg.data)


class Channel:
    """One NETLINK_ROUTE socket in the network namespace of the thread that opened it, used
    synchronously: request, then its answers (matched by sequence number; anything else is dropped)."""

    def __init__(self) -> None:
        self.sock = raw_socket()
        with contextlib.suppress(OSError):  # dumps filtered by the kernel (one interface's addresses), 4.20+
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def run(self, *requests: tuple[Any, int, int]) -> list[int]:
        """Send (pyroute2 message, type, flags) requests in one datagram; the errno of each (0: done),
        in order. The kernel runs them one after the other and acknowledges each, a failed one too."""
        buf = bytearray()
        seqs = []
        for msg, mtype, flags in requests:
            seqs.append(self._next())
            buf += frame(msg, mtype, flags, seqs[-1])
        answers: dict[int, int] = {}
        self.sock.send(buf)
        while len(answers) < len(seqs):
            data = self.sock.recv(RECV_SIZE)
            for mtype, seq, pos, _length in _messages(data):
                if mtype == NLMSG_ERROR and seq in seqs:
                    answers[seq] = -NLMSGERR.unpack_from(data, pos + NLMSGHDR.size)[0]
        return [answers[seq] for seq in seqs]

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        seq = self._next()
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, NLM_F_REQUEST | flags, seq, 0) + body)
        return seq

    def get_link(self, name: str) -> Link | None:
        """RTM_GETLINK by name, decoded into a Link (only its attributes); None when there is no such link."""
        encoded = name.encode() + b"\0"
        attr = NLATTR.pack(NLATTR.size + len(encoded), IFLA_IFNAME) + encoded
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr + b"\0" * (align(len(attr)) - len(attr))
        try:
            seq = self._send(RTM_GETLINK, 0, body)
            while True:  # skip a late answer to an earlier request on this socket
                data = self.sock.recv(RECV_SIZE)
                found = [(mtype, pos, length) for mtype, got, pos, length in _messages(data) if got == seq]
                if found:
                    break
        except OSError as exc:
            raise CNIError(KERNEL, f"failed to look up link {name!r}", str(exc)) from None
        mtype, pos, length = found[0]
        if mtype == NLMSG_ERROR:
            (err,) = NLMSGERR.unpack_from(data, pos + NLMSGHDR.size)
            if -err in (errno.ENODEV, errno.ENOENT):
                return None
            raise CNIError(KERNEL, f"failed to look up link {name!r}", os.strerror(-err))
        if mtype != RTM_NEWLINK:
            raise CNIError(KERNEL, f"unexpected rtnetlink answer looking up {name!r}", f"type {mtype}")
        return _decode_link(data, pos, length)

    def dump(self, mtype: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """The answers to a dump request: (datagram, start, length) of each message."""
        seq = self._send(mtype, NLM_F_DUMP, body)
        out = []
        while True:
            data = self.sock.recv(RECV_SIZE)
            for got, mseq, pos, length in _messages(data):
                if mseq != seq:
                    continue
                if got == NLMSG_DONE:
                    return out
                if got == NLMSG_ERROR:
                    err = -NLMSGERR.unpack_from(data, pos + NLMSGHDR.size)[0]
                    raise OSError(err, os.strerror(err))
                out.append((data, pos, length))

    def addresses(self, index: int) -> list[tuple[str, int, int]]:
        """(address "ip/prefixlen", family, flags) of every address of interface `index`."""
        out = []
        for data, pos, length in self.dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index)):
            family, prefixlen, flags, _scope, ifindex = IFADDRMSG.unpack_from(data, pos + NLMSGHDR.size)
            if ifindex != index:
                continue  # a kernel without strict dump checking sends every interface's
            address = None
            for atype, payload in attrs(data, pos + NLMSGHDR.size + IFADDRMSG.size, pos + length):
                if atype == IFA_ADDRESS:
                    address = socket.inet_ntop(family, payload)
                elif atype == IFA_FLAGS:
                    (flags,) = struct.unpack_from("I", payload)
            if address is not None:
                out.append((f"{address}/{prefixlen}", family, flags))
        return out


_LINK_ATTRS = frozenset({IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS})


def _decode_link(data: bytes, pos: int, length: int) -> Link:
    """A Link from an RTM_NEWLINK answer: only the attributes it holds are looked at (an answer has ~50,
    statistics included)."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, pos + NLMSGHDR.size)
    link = Link(name="", index=index, flags=flags)
    start, end = pos + NLMSGHDR.size + IFINFOMSG.size, pos + length
    unpack = struct.unpack_from
    while start + NLATTR.size <= end:
        alen, atype = NLATTR.unpack_from(data, start)
        if alen < NLATTR.size:
            break
        atype &= NLA_TYPE_MASK
        if atype in _LINK_ATTRS:
            payload = data[start + 4 : start + alen]
            if atype == IFLA_IFNAME:
                link.name = payload.rstrip(b"\0").decode(errors="replace")
            elif atype == IFLA_ADDRESS:
                link.mac = ":".join(f"{b:02x}" for b in payload)
            elif atype == IFLA_MTU:
                (link.mtu,) = unpack("I", payload)
            elif atype == IFLA_LINK:
                (link.peer_index,) = unpack("i", payload)
            elif atype == IFLA_MASTER:
                (link.master,) = unpack("i", payload)
            elif atype == IFLA_IFALIAS:
                link.alias = payload.rstrip(b"\0").decode(errors="replace")
            else:  # IFLA_LINKINFO
                for itype, ipayload in attrs(payload, 0, len(payload)):
                    if itype == IFLA_INFO_KIND:
                        link.kind = ipayload.rstrip(b"\0").decode(errors="replace")
        start += align(alen)
    return link


def messages() -> Any:
    """pyroute2's rtnetlink message classes (ifinfmsg, ifaddrmsg, rtmsg), imported on first use."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return ifinfmsg, ifaddrmsg, rtmsg


class Handles:
    """The netlink sockets of the namespace the calling thread is in when they are first used: the
    channel, and pyroute2's IPRoute for the rare operations. Opened lazily, closed by their owner."""

    def __init__(self) -> None:
        self._channel: Channel | None = None
        self._ipr: Any = None

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            self._channel = Channel()
        return self._channel

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            self._ipr = iproute()
        return self._ipr

    def get_link(self, name: str) -> Link | None:
        return self.channel.get_link(name)

    def close(self) -> None:
        channel, ipr = self._channel, self._ipr
        self._channel = self._ipr = None
        if channel is not None:
            channel.close()
        if ipr is not None:
            with contextlib.suppress(*errors()):
                ipr.close()


@contextlib.contextmanager
def handles(context: Any = None) -> Iterator[Handles]:
    """The node handles of a request: its Context's (a daemon worker thread's, kept open between
    requests), else new ones for this request only."""
    kept = getattr(context, "netlink", None)
    if kept is not None:
        yield kept
        return
    own = Handles()
    try:
        yield own
    finally:
        own.close()
