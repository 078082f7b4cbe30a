"""Every kernel operation of the bridge plugin: links, addresses, routes, bridge ports, sysctls.

This is the only module that imports pyroute2, and it does so lazily (first call of `_ipr()` or
`Pod`), so VERSION, STATUS and a DEL whose links are already gone never pay its import cost. It
imports only pyroute2's rtnetlink modules, not the package's __init__ (see `_lean_pyroute2`).
The netlink socket of the node namespace is per thread: the daemon serves requests concurrently.
Functions are thin: they translate one intent into netlink requests and turn every netlink or OS
failure into CNIError code 101 (pycni's "kernel operation failed", SPEC.md "Error": codes 100+ are
plugin-specific) naming the object at fault.

Namespaces: the plugin runs in the host ("node") network namespace. Pod-side work happens inside
`Pod(path)`, which moves the calling thread into the pod netns with setns(2) (so /proc/sys/net
and a netlink socket opened there belong to the pod) and moves it back on exit. The veth peer is
created directly inside the pod netns (IFLA_NET_NS_FD in the peer's attributes): moving an
interface between namespaces afterwards costs ~20 ms of kernel time per attach.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import random
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from .. import faults
from ..spec.errors import INVALID_CONFIG, INVALID_ENV, KERNEL, CNIError

CLONE_NEWNET = 0x40000000
IFF_UP = 0x1
IFF_PROMISC = 0x100
IFA_F_NODAD = 0x02
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4

_host: threading.local = threading.local()  # .ipr: this thread's netlink socket in the node netns
_libc: Any = None


class NetnsGone(Exception):
    """The namespace path does not exist (any more)."""


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


@dataclass
class Address:
    address: str  # interface form "10.1.0.2/24"
    flags: int = 0


@dataclass
class RouteInfo:
    dst: str
    gw: str | None = None
    table: int = 254
    priority: int = 0
    extra: dict = field(default_factory=dict)


# -- plumbing -------------------------------------------------------------------------------------


@contextlib.contextmanager
def kernel(what: str) -> Iterator[None]:
    """Turn a netlink/OS failure into CNIError 101 naming what was being done."""
    try:
        yield
    except CNIError:
        raise
    except _nl_errors() as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
        detail = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
        raise CNIError(KERNEL, f"failed to {what}", detail or type(exc).__name__) from None


def _lean_pyroute2() -> None:
    """Import pyroute2's submodules without running its package __init__.

    `pyroute2/__init__.py` (0.9) imports every module of the library - NDB, IPDB, conntrack, nftables,
    wireguard, plan9, ... - about 120 ms; the rtnetlink client alone (`pyroute2.iproute.linux`) is
    about 75 ms. Before the first pyroute2 import, the package is registered as a bare package object
    (same __path__ and __spec__) so that importing a submodule finds it and skips __init__. Anyone
    who later asks it for something __init__ defines (`from pyroute2 import NDB`) gets the real
    __init__ run then, by the module-level __getattr__ (PEP 562): nothing changes for other users.
    """
    if "pyroute2" in sys.modules:
        return
    import importlib.util
    import types

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # let the plain import report it
    package = types.ModuleType("pyroute2")
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__loader__ = spec.loader
    package.__package__ = "pyroute2"
    state = {"loaded": False}

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:  # `from pyroute2 import config` inside pyroute2: a submodule, no need for __init__
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pyroute2.{name}":
                raise
        if not state["loaded"]:
            state["loaded"] = True
            spec.loader.exec_module(package)  # the real __init__, into this module object
            if name in package.__dict__:
                return package.__dict__[name]
        raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")

    package.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = package


def _iproute() -> Any:
    """A new pyroute2 IPRoute (a netlink socket in the calling thread's netns)."""
    _lean_pyroute2()
    from pyroute2.iproute.linux import IPRoute

    return IPRoute()


def _nl_errors() -> tuple[type[BaseException], ...]:
    """What a netlink request may raise (pyroute2's NetlinkError is not an OSError)."""
    _lean_pyroute2()
    from pyroute2.netlink.exceptions import NetlinkError

    return (NetlinkError, OSError, ValueError)


def _netlink_error_code(exc: BaseException) -> int:
    return int(getattr(exc, "code", 0) or getattr(exc, "errno", 0) or 0)


def _ipr() -> Any:
    """The netlink socket of the namespace the plugin runs in (opened once per thread, lazily),
    with a raw rtnetlink socket opened at the same time, in the same namespace, for `get_link`."""
    ipr = getattr(_host, "ipr", None)
    if ipr is None:
        ipr = _host.ipr = _iproute()
        _host.raw = _raw_socket()
    return ipr


def close() -> None:
    """Close this thread's node netlink sockets (the daemon does after every request)."""
    ipr, raw = getattr(_host, "ipr", None), getattr(_host, "raw", None)
    _host.ipr = _host.raw = None
    if raw is not None:
        raw.close()
    if ipr is not None:
        with contextlib.suppress(*_nl_errors()):
            ipr.close()


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
    """Inside a pod netns: `with Pod(path) as pod: pod.ipr...` (thread switched back on exit).

    The netns fd stays open for the object's lifetime so it can be used as IFLA_NET_NS_FD.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_netns(path)
        self.ipr: Any = None
        self._home = -1

    def __enter__(self) -> Self:
        _lean_pyroute2()
        from pyroute2.iproute.linux import IPRoute

        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.fd)
        except OSError as exc:
            os.close(self._home)
            raise CNIError(INVALID_ENV, f"{self.path!r} is not a network namespace", str(exc)) from None
        try:
            self.ipr = IPRoute()
        except BaseException:
            self._leave()
            raise
        return self

    def _leave(self) -> None:
        try:
            _setns(self._home)  # if this fails the process must not go on in the wrong netns
        finally:
            os.close(self._home)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.ipr is not None:
                self.ipr.close()
                self.ipr = None
        finally:
            self._leave()

    def is_own(self) -> bool:
        """Whether this is the namespace the calling thread is in (the node's, for the plugin)."""
        here = os.stat("/proc/thread-self/ns/net")
        mine = os.fstat(self.fd)
        return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)

    def close(self) -> None:
        os.close(self.fd)


def _link_from_msg(msg: Any) -> Link:
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


def get_link(name: str, ipr: Any = None) -> Link | None:
    """The link `name` of the node (ipr None) or of the pod whose socket `ipr` is (inside `Pod`).

    Asked over a raw rtnetlink socket and decoded here (the attributes a Link holds): pyroute2
    decodes every attribute of the answer - statistics included - which made the ten lookups of an
    ADD cost more than all its other netlink requests together."""
    if ipr is None or ipr is getattr(_host, "ipr", None):
        _ipr()
        return _raw_get_link(_host.raw, name)
    raw = _raw_socket()  # `ipr` is a pod's: this thread is inside that pod's netns right now
    try:
        return _raw_get_link(raw, name)
    finally:
        raw.close()


def _pyroute2_get_link(name: str, ipr: Any = None) -> Link | None:
    ipr = ipr or _ipr()
    try:
        msgs = ipr.link("get", ifname=name)
    except _nl_errors() as exc:
        if _netlink_error_code(exc) in (errno.ENODEV, errno.ENOENT):
            return None
        raise CNIError(KERNEL, f"failed to look up link {name!r}", str(exc)) from None
    return _link_from_msg(msgs[0]) if msgs else None


_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK, _IFLA_MASTER, _IFLA_LINKINFO, _IFLA_IFALIAS = 1, 3, 4, 5, 10, 18, 20
_IFLA_INFO_KIND = 1
_RTM_NEWLINK, _RTM_GETLINK, _NLMSG_ERROR, _NLM_F_REQUEST = 16, 18, 2, 1


def _raw_socket() -> Any:
    """A raw NETLINK_ROUTE socket in the calling thread's current network namespace."""
    import socket

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.settimeout(10)
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise CNIError(KERNEL, "rtnetlink is not reachable", str(exc)) from None
    return sock


def _nl_attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    import struct

    while start + 4 <= end:
        alen, atype = struct.unpack_from("HH", buf, start)
        if alen < 4:
            return
        yield atype & 0x3FFF, buf[start + 4 : start + alen]
        start += (alen + 3) & ~3


_seq = 0


def _raw_get_link(sock: Any, name: str) -> Link | None:
    """RTM_GETLINK by name; None when there is no such link (ENODEV)."""
    import struct

    global _seq
    _seq = (_seq + 1) & 0x7FFFFFFF
    seq = _seq
    encoded = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(encoded), _IFLA_IFNAME) + encoded
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BxHiII", 0, 0, 0, 0, 0) + attr
    try:
        sock.send(struct.pack("IHHII", 16 + len(body), _RTM_GETLINK, _NLM_F_REQUEST, seq, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            length, mtype, _flags, got = struct.unpack_from("IHHI", data, 0)
            if got == seq:
                break
    except OSError as exc:
        raise CNIError(KERNEL, f"failed to look up link {name!r}", str(exc)) from None
    if mtype == _NLMSG_ERROR:
        (err,) = struct.unpack_from("i", data, 16)
        if -err in (errno.ENODEV, errno.ENOENT):
            return None
        raise CNIError(KERNEL, f"failed to look up link {name!r}", os.strerror(-err))
    if mtype != _RTM_NEWLINK:
        raise CNIError(KERNEL, f"unexpected rtnetlink answer looking up {name!r}", f"type {mtype}")
    _family, _type, index, flags, _change = struct.unpack_from("BxHiII", data, 16)
    link = Link(name="", index=index, flags=flags)
    for atype, payload in _nl_attrs(data, 32, length):
        if atype == _IFLA_IFNAME:
            link.name = payload.rstrip(b"\0").decode(errors="replace")
        elif atype == _IFLA_ADDRESS:
            link.mac = ":".join(f"{b:02x}" for b in payload)
        elif atype == _IFLA_MTU:
            (link.mtu,) = struct.unpack_from("I", payload)
        elif atype == _IFLA_LINK:
            (link.peer_index,) = struct.unpack_from("i", payload)
        elif atype == _IFLA_MASTER:
            (link.master,) = struct.unpack_from("i", payload)
        elif atype == _IFLA_IFALIAS:
            link.alias = payload.rstrip(b"\0").decode(errors="replace")
        elif atype == _IFLA_LINKINFO:
            for itype, ipayload in _nl_attrs(payload, 0, len(payload)):
                if itype == _IFLA_INFO_KIND:
                    link.kind = ipayload.rstrip(b"\0").decode(errors="replace")
    return link


def host_link_names() -> set[str]:
    """Names of the links of the current netns without netlink (cheap: no pyroute2 import)."""
    names = set()
    with open("/proc/net/dev") as fh:
        for line in fh.readlines()[2:]:
            names.add(line.split(":", 1)[0].strip())
    return names


def links_with_alias_prefix(prefix: str) -> list[Link]:
    with kernel("list links"):
        return [link for link in map(_link_from_msg, _ipr().get_links()) if link.alias.startswith(prefix)]


def write_sysctl(path: str, value: str, *, only_if_different: bool = True, strict: bool = False) -> None:
    """Write /proc/sys/<path> of the current thread's netns; errors are ignored unless strict.

    The reference plugin ignores failures of the per-interface sysctls (e.g. no IPv6 in the kernel).
    """
    full = "/proc/sys/" + path
    try:
        if only_if_different:
            with open(full) as fh:
                if fh.read().strip() == value:
                    return
        with open(full, "w") as fh:
            fh.write(value)
    except OSError as exc:
        if strict:
            raise CNIError(KERNEL, f"failed to set sysctl {path}={value}", exc.strerror or str(exc)) from None


def random_mac() -> str:
    """A locally administered unicast MAC."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


# -- bridge ---------------------------------------------------------------------------------------


def ensure_bridge(name: str, mtu: int, promisc: bool, vlan_filtering: bool) -> Link:
    """Create the bridge if needed (reference `ensureBridge`), up, accept_ra=0, right kind.

    A new bridge gets an explicit MAC, which pins it (addr_assign_type SET): otherwise the bridge
    takes the lowest MAC of its ports and changes as ports come and go.
    """
    ipr = _ipr()
    link = get_link(name)
    if link is None:
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "address": random_mac()}
        if mtu:
            kwargs["mtu"] = mtu
        if vlan_filtering:
            kwargs["br_vlan_filtering"] = 1
        try:
            ipr.link("add", **kwargs)
        except _nl_errors() as exc:
            code = _netlink_error_code(exc)
            if code == errno.EOPNOTSUPP and vlan_filtering:
                raise CNIError(KERNEL, f"failed to create bridge {name!r} with VLAN filtering",
                               "the kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)") from None
            if code != errno.EEXIST:  # EEXIST: a concurrent ADD created it first
                raise CNIError(KERNEL, f"failed to create bridge {name!r}", str(exc)) from None
        link = get_link(name)
        if link is None:
            raise CNIError(KERNEL, f"bridge {name!r} vanished right after it was created")
    if link.kind != "bridge":
        raise CNIError(KERNEL, f"{name!r} already exists but is not a bridge", f"kind {link.kind or 'unknown'!r}")
    write_sysctl(f"net/ipv6/conf/{name}/accept_ra", "0")  # we own the routes of this interface
    with kernel(f"configure bridge {name!r}"):
        if vlan_filtering:
            ipr.link("set", index=link.index, kind="bridge", br_vlan_filtering=1)
        if promisc and not link.promisc:
            ipr.link("set", index=link.index, flags=IFF_PROMISC, change=IFF_PROMISC)
        if not link.flags & IFF_UP:
            ipr.link("set", index=link.index, state="up")
    return get_link(name) or link


def pin_mac(link: Link) -> None:
    """Reference `ensureAddr`: set the bridge's MAC to itself so it no longer follows its ports."""
    with kernel(f"pin the MAC of {link.name!r}"):
        _ipr().link("set", index=link.index, address=link.mac)


def ensure_address(link: Link, iface: str, force: bool) -> None:
    """Put a gateway address on the bridge (reference `ensureAddr` semantics).

    Present already: nothing to do (a concurrent ADD may have added it first: EEXIST is fine).
    A different IPv4 address, or an overlapping IPv6 one, is an error unless `force`, which
    replaces it. IPv6 addresses are added with IFA_F_NODAD: nothing ever waits for DAD.
    """
    want = ipaddress.ip_interface(iface)
    ipr = _ipr()
    with kernel(f"list the addresses of {link.name!r}"):
        current = [a for a in addresses(link.index, ipr) if ipaddress.ip_interface(a.address).version == want.version]
    for addr in current:
        have = ipaddress.ip_interface(addr.address)
        if have == want:
            return
        if want.version == 4 or have.network.overlaps(want.network):
            if not force:
                raise CNIError(KERNEL, f"{link.name!r} already has an IP address different from {want}", str(have))
            with kernel(f"remove {have} from {link.name!r}"):
                ipr.addr("del", index=link.index, address=str(have.ip), prefixlen=have.network.prefixlen)
    add_address(link.index, str(want), ipr, nodad=True, tolerate_exists=True, what=link.name)


def addresses(index: int, ipr: Any = None) -> list[Address]:
    ipr = ipr or _ipr()
    out = []
    for msg in ipr.get_addr(index=index):
        addr = msg.get("IFA_ADDRESS")
        if addr is None:
            continue
        flags = msg.get("IFA_FLAGS")
        out.append(Address(f"{addr}/{msg['prefixlen']}", flags if flags is not None else msg["flags"]))
    return out


def add_address(index: int, iface: str, ipr: Any, *, nodad: bool, tolerate_exists: bool = False, what: str = "") -> None:
    ip = ipaddress.ip_interface(iface)
    kwargs: dict[str, Any] = {"index": index, "address": str(ip.ip), "prefixlen": ip.network.prefixlen}
    if ip.version == 4 and ip.network.prefixlen < 31:
        kwargs["broadcast"] = str(ip.network.broadcast_address)
    if ip.version == 6 and nodad:
        kwargs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **kwargs)
    except _nl_errors() as exc:
        if tolerate_exists and _netlink_error_code(exc) == errno.EEXIST:
            return
        raise CNIError(KERNEL, f"failed to add address {ip} to {what or index}", str(exc)) from None


def enable_forwarding(version: int) -> None:
    """Reference `enableIPForward`: a gateway must route (net.ipv4.ip_forward / ipv6 forwarding)."""
    path = "net/ipv4/ip_forward" if version == 4 else "net/ipv6/conf/all/forwarding"
    write_sysctl(path, "1", strict=True)


# -- veth -----------------------------------------------------------------------------------------


def create_veth(pod: Pod, host_name: str, ifname: str, bridge: Link, mtu: int, mac: str, alias: str) -> Link:
    """Create the pair in one request: host end enslaved, up, and its peer `ifname` in the pod.

    Returns the host end. Fails (101) when `ifname` already exists in the pod netns or
    `host_name` exists here (SPEC.md "ADD": the interface must not exist yet).
    """
    ipr = _ipr()
    peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": pod.fd}
    kwargs: dict[str, Any] = {"ifname": host_name, "kind": "veth", "master": bridge.index, "peer": peer,
                              "flags": IFF_UP, "change": IFF_UP}
    if mtu:
        kwargs["mtu"] = mtu
        peer["mtu"] = mtu
    if mac:
        peer["address"] = mac
    try:
        ipr.link("add", **kwargs)
    except _nl_errors() as exc:
        if _netlink_error_code(exc) == errno.EEXIST:
            if get_link(host_name) is not None:
                raise CNIError(KERNEL, f"host veth {host_name!r} already exists",
                               "a previous attachment with the same container ID and ifname was not deleted") from None
            raise CNIError(KERNEL, f"container interface {ifname!r} already exists in {pod.path}") from None
        raise CNIError(KERNEL, f"failed to create veth pair {host_name!r}/{ifname!r}", str(exc)) from None
    # From here on the pair exists: any failure of this function removes it before raising (the
    # caller registers its undo only once it has the link - an undo for a name that was never
    # created could delete another attachment's veth).
    try:
        faults.point("bridge.veth.created")
        link = get_link(host_name)
        if link is None:
            raise CNIError(KERNEL, f"veth {host_name!r} vanished right after it was created")
        with kernel(f"set the alias of {host_name!r}"):
            ipr.link("set", index=link.index, ifalias=alias)
        link.alias = alias
        write_sysctl(f"net/ipv6/conf/{host_name}/accept_ra", "0", only_if_different=False)
    except BaseException:
        with contextlib.suppress(Exception):
            delete_link(host_name)
        raise
    return link


def configure_port(link: Link, hairpin: bool, isolated: bool) -> None:
    """Bridge port flags: hairpin (IFLA_BRPORT_MODE) and port isolation (IFLA_BRPORT_ISOLATED)."""
    if not hairpin and not isolated:
        return  # both default to off on a new port
    with kernel(f"set bridge port options of {link.name!r}"):
        _ipr().brport("set", index=link.index, mode=int(hairpin), isolated=int(isolated))


def configure_vlans(link: Link, vlan: int, trunk: list[int], preserve_default: bool) -> None:
    """Reference semantics: an access port (untagged pvid `vlan`) or a trunk (tagged `trunk` ids);
    the default VLAN 1 is removed from the port unless `preserveDefaultVlan`."""
    if not vlan and not trunk:
        return
    ipr = _ipr()
    with kernel(f"set the VLANs of {link.name!r}"):
        if not preserve_default:
            with contextlib.suppress(*_nl_errors()):
                ipr.vlan_filter("del", index=link.index, vlan_info={"vid": 1})
        if vlan:
            ipr.vlan_filter("add", index=link.index,
                            vlan_info={"vid": vlan, "flags": BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED})
        for vid in trunk:
            ipr.vlan_filter("add", index=link.index, vlan_info={"vid": vid})


def ensure_vlan_gateway(bridge: Link, name: str, peer_name: str, vlan: int, preserve_default: bool) -> Link:
    """Reference `ensureVlanInterface`: with `vlan` + `isGateway` the gateway address lives on a
    host-side veth `<bridge>.<vlan>` whose peer is an access port of that VLAN on the bridge."""
    link = get_link(name)
    if link is not None:
        return link
    ipr = _ipr()
    kwargs: dict[str, Any] = {"ifname": peer_name, "kind": "veth", "master": bridge.index,
                              "flags": IFF_UP, "change": IFF_UP, "peer": {"ifname": name}}
    if bridge.mtu:
        kwargs["mtu"] = bridge.mtu
        kwargs["peer"]["mtu"] = bridge.mtu
    try:
        ipr.link("add", **kwargs)
    except _nl_errors() as exc:
        if _netlink_error_code(exc) != errno.EEXIST:
            raise CNIError(KERNEL, f"failed to create the VLAN gateway {name!r}", str(exc)) from None
    port, link = get_link(peer_name), get_link(name)
    if port is None or link is None:
        raise CNIError(KERNEL, f"VLAN gateway {name!r} vanished right after it was created")
    configure_vlans(port, vlan, [], preserve_default)
    with kernel(f"set {name!r} up"):
        ipr.link("set", index=link.index, state="up")
    return get_link(name) or link


def delete_link(name: str) -> bool:
    """Delete a host link by name; False when it did not exist (DEL is idempotent)."""
    try:
        _ipr().link("del", ifname=name)
    except _nl_errors() as exc:
        if _netlink_error_code(exc) in (errno.ENODEV, errno.ENOENT):
            return False
        raise CNIError(KERNEL, f"failed to delete link {name!r}", str(exc)) from None
    return True


# -- pod side -------------------------------------------------------------------------------------


def pod_sysctls(ifname: str, enabledad: bool, has_v6: bool) -> None:
    """Container-side sysctls of the reference bridge (call inside `Pod`).

    accept_dad=0 unless `enabledad` (then accept_dad=1 + enhanced_dad=1), arp_notify=1; for IPv6
    addresses the reference IPAM helper also enables IPv6 on lo and the interface and sets
    keep_addr_on_down=1.
    """
    if enabledad:
        write_sysctl(f"net/ipv6/conf/{ifname}/enhanced_dad", "1")
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "1")
    else:
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
    write_sysctl(f"net/ipv4/conf/{ifname}/arp_notify", "1")
    if has_v6:
        for dev in ("lo", ifname):
            write_sysctl(f"net/ipv6/conf/{dev}/disable_ipv6", "0")
        write_sysctl(f"net/ipv6/conf/{ifname}/keep_addr_on_down", "1")


def pod_configure(pod: Pod, ifname: str, ips: list[str], routes: list[dict], up: bool, nodad: bool) -> Link:
    """Addresses, link up, then routes on the container interface (reference `ConfigureIface`).

    `routes` are dicts {dst, gw, priority, table, scope, mtu, advmss}; routes are added after the
    link is up because the kernel refuses a gateway route on a down link.
    """
    ipr = pod.ipr
    link = get_link(ifname, ipr)
    if link is None:
        raise CNIError(KERNEL, f"container interface {ifname!r} not found in {pod.path}")
    for iface in ips:
        add_address(link.index, iface, ipr, nodad=nodad, what=ifname)
    if up:
        with kernel(f"set {ifname!r} up"):
            ipr.link("set", index=link.index, state="up")
    for route in routes:
        add_route(ipr, link.index, route, ifname)
    return get_link(ifname, ipr) or link


# rtnetlink carries a route's priority and table (RTA_PRIORITY, RTA_TABLE) and its metrics (RTAX_MTU,
# RTAX_ADVMSS) as u32: a larger number must be refused here, as a configuration error, before pyroute2
# fails to pack it (a struct.error, which would surface as an internal error).
_U32_ROUTE_FIELDS = ("mtu", "advmss", "priority", "table")


def add_route(ipr: Any, index: int, route: dict, ifname: str) -> None:
    for key in _U32_ROUTE_FIELDS:
        value = route.get(key)
        if value is not None and not 0 <= value <= 0xFFFFFFFF:
            raise CNIError(INVALID_CONFIG, f"route {route.get('dst')}: {key} {value} does not fit in 32 bits")
    dst = ipaddress.ip_network(route["dst"])
    # proto boot (3), as iproute2 and the reference (vishvananda/netlink) add routes; pyroute2 says static
    kwargs: dict[str, Any] = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": index,
                              "family": 2 if dst.version == 4 else 10, "proto": 3}
    if route.get("gw"):
        kwargs["gateway"] = route["gw"]
    if route.get("priority"):
        kwargs["priority"] = route["priority"]
    if route.get("table"):
        kwargs["table"] = route["table"]
    if route.get("scope") is not None:
        kwargs["scope"] = route["scope"]
    metrics = {}
    if route.get("mtu"):
        metrics["RTAX_MTU"] = route["mtu"]
    if route.get("advmss"):
        metrics["RTAX_ADVMSS"] = route["advmss"]
    if metrics:
        kwargs["metrics"] = metrics
    try:
        ipr.route("add", **kwargs)
    except _nl_errors() as exc:
        if _netlink_error_code(exc) == errno.EEXIST:
            # ECMP: the reference appends a nexthop; an identical route already present is fine
            return
        via = f" via {route.get('gw')}" if route.get("gw") else ""
        raise CNIError(KERNEL, f"failed to add route {dst}{via} dev {ifname}", str(exc)) from None


def routes(ipr: Any, index: int | None = None) -> list[RouteInfo]:
    out = []
    for family in (2, 10):
        for msg in ipr.get_routes(family=family):
            if index is not None and msg.get("RTA_OIF") != index:
                continue
            dst = msg.get("RTA_DST")
            length = msg["dst_len"]
            if dst is None:
                dst = "0.0.0.0" if family == 2 else "::"
            out.append(RouteInfo(dst=str(ipaddress.ip_network(f"{dst}/{length}", strict=False)),
                                 gw=msg.get("RTA_GATEWAY"), table=msg.get("RTA_TABLE") or msg["table"],
                                 priority=msg.get("RTA_PRIORITY") or 0))
    return out


def pod_delete(pod: Pod, ifname: str) -> list[str]:
    """Delete `ifname` in the pod (its veth peer goes with it); returns its addresses."""
    link = get_link(ifname, pod.ipr)
    if link is None:
        return []
    with kernel(f"list the addresses of {ifname!r}"):
        addrs = [a.address for a in addresses(link.index, pod.ipr)]
    try:
        pod.ipr.link("del", index=link.index)
    except _nl_errors() as exc:
        if _netlink_error_code(exc) not in (errno.ENODEV, errno.ENOENT):
            raise CNIError(KERNEL, f"failed to delete {ifname!r} in {pod.path}", str(exc)) from None
    return addrs


def netlink_ready() -> None:
    """STATUS: the plugin can talk rtnetlink and may create links (CAP_NET_ADMIN)."""
    with kernel("open an rtnetlink socket"):
        _ipr().get_links(1)


def link_kind_raw(name: str) -> str | None:
    """Kind of link `name` ("bridge", "veth", "" when unknown), None when absent - over a raw
    rtnetlink socket, without pyroute2, so STATUS stays cheap. Raises CNIError 101 when rtnetlink
    cannot be reached."""
    import socket
    import struct

    rtm_getlink, rtm_newlink, nlmsg_error, ifla_ifname, ifla_linkinfo, ifla_info_kind = 18, 16, 2, 3, 18, 1
    encoded = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(encoded), ifla_ifname) + encoded
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BxHiII", 0, 0, 0, 0, 0) + attr
    msg = struct.pack("IHHII", 16 + len(body), rtm_getlink, 1, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5)
            sock.bind((0, 0))
            sock.send(msg)
            data = sock.recv(65536)
    except OSError as exc:
        raise CNIError(KERNEL, "rtnetlink is not reachable", str(exc)) from None
    length, mtype = struct.unpack_from("IH", data, 0)
    if mtype == nlmsg_error:
        (err,) = struct.unpack_from("i", data, 16)
        if -err in (errno.ENODEV, errno.ENOENT):
            return None
        raise CNIError(KERNEL, f"rtnetlink GETLINK {name!r} failed", os.strerror(-err))
    if mtype != rtm_newlink:
        raise CNIError(KERNEL, "unexpected rtnetlink answer", f"type {mtype}")

    for atype, payload in _nl_attrs(data, 32, length):
        if atype == ifla_linkinfo:
            for itype, ipayload in _nl_attrs(payload, 0, len(payload)):
                if itype == ifla_info_kind:
                    return ipayload.rstrip(b"\0").decode()
    return ""


def can_admin_network() -> bool:
    """CAP_NET_ADMIN (bit 12) in the effective set: needed to create bridges and veths."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return False
