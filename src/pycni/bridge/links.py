"""Link, address and route operations of the bridge plugin: the bridge, veth pairs, bridge ports
and VLANs, addresses and routes, on the node and (inside `netns.Pod`) in the pod.

Functions are thin: they translate one intent into netlink requests over the handles they are
given (`netlink.Handles`: the node's from the verb, a pod's inside `netns.Pod`) and turn every
netlink or OS failure into CNIError code 101 (pycni's "kernel operation failed", SPEC.md "Error":
codes 100+ are plugin-specific) naming the object at fault. What an ADD or a DEL does on every
request goes through the channel (pyroute2's messages, the steps of one interface in one datagram:
the `*_message` builders below); the rare operations through pyroute2's IPRoute (`nl.ipr`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import faults
from ..spec.errors import INVALID_CONFIG, KERNEL, CNIError
from ..spec.result import U32_MAX
from . import netlink
from .netlink import (
    CREATE,
    IFF_PROMISC,
    IFF_UP,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Link,
    kernel,
)
from .sysctl import write_sysctl

if TYPE_CHECKING:
    from .netlink import Handles
    from .netns import Pod


# IEEE 802: bit 0 of the first octet marks a multicast MAC, bit 1 a locally administered one
_MAC_MULTICAST, _MAC_LOCAL = 0x01, 0x02
# linux/rtnetlink.h: a route's protocol "boot" - as iproute2 and the reference (vishvananda/netlink) add
# routes (pyroute2 says static), its type "unicast", and the main table (the header holds 8 bits of it)
RTPROT_BOOT, RTN_UNICAST, RT_TABLE_MAIN = 3, 1, 254


@dataclass
class Address:
    address: str  # interface form "10.1.0.2/24"
    flags: int = 0


@dataclass
class RouteInfo:
    dst: str
    gw: str | None
    table: int
    priority: int = 0



def get_link(nl: Handles, name: str) -> Link | None:
    """The link `name` in the namespace of `nl` (the node's, or inside `Pod` the pod's)."""
    return nl.get_link(name)


def links_with_alias_prefix(nl: Handles, prefix: str) -> list[Link]:
    with kernel("list links"):
        return [link for link in map(netlink.link_from_msg, nl.ipr.get_links()) if link.alias.startswith(prefix)]


# -- messages (pyroute2's classes; tests/test_netlink_messages.py: the bytes IPRoute would send) ---------------


def link_message(index: int = 0, *, flags: int = 0, change: int = 0, attrs: list | None = None) -> Any:
    ifinfmsg, _, _ = netlink.messages()
    msg = ifinfmsg()
    msg["family"], msg["index"], msg["flags"], msg["change"] = 0, index, flags, change
    msg["attrs"] = attrs or []
    return msg


def veth_message(host_name: str, ifname: str, netns_fd: int, master: int, mtu: int, mac: str) -> Any:
    """The pair in one RTM_NEWLINK: host end enslaved and up, its peer created inside the pod netns."""
    peer: list = [("IFLA_IFNAME", ifname), ("IFLA_NET_NS_FD", netns_fd)]
    attrs: list = [("IFLA_IFNAME", host_name), ("IFLA_MASTER", master)]
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
        peer.append(("IFLA_MTU", mtu))
    if mac:
        peer.append(("IFLA_ADDRESS", mac))
    info = [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]})]
    attrs.append(("IFLA_LINKINFO", {"attrs": info}))
    return link_message(flags=IFF_UP, change=IFF_UP, attrs=attrs)


def address_message(index: int, iface: str, *, nodad: bool = False, delete: bool = False) -> Any:
    """RTM_NEWADDR / RTM_DELADDR of `iface` ("10.1.0.2/24"); IPv4 with its broadcast address (below
    /31), IPv6 with IFA_F_NODAD when asked."""
    _, ifaddrmsg, _ = netlink.messages()
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD  # loaded with the message class

    ip = ipaddress.ip_interface(iface)
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["flags"], msg["scope"], msg["index"] = (
        socket.AF_INET if ip.version == 4 else socket.AF_INET6, ip.network.prefixlen, 0, 0, index)
    attrs: list = [("IFA_ADDRESS", str(ip.ip))]
    if ip.version == 4:
        attrs.append(("IFA_LOCAL", str(ip.ip)))
        if ip.network.prefixlen < 31 and not delete:
            attrs.append(("IFA_BROADCAST", str(ip.network.broadcast_address)))
    elif nodad and not delete:
        attrs.append(("IFA_FLAGS", IFA_F_NODAD))
    msg["attrs"] = attrs
    return msg


# rtnetlink carries a route's priority and table (RTA_PRIORITY, RTA_TABLE) and its metrics (RTAX_MTU,
# RTAX_ADVMSS) as u32: a larger number must be refused here, as a configuration error, before it is
# packed (a struct.error, which would surface as an internal error).
_U32_ROUTE_FIELDS = ("mtu", "advmss", "priority", "table")


def route_message(index: int, route: dict) -> Any:
    """RTM_NEWROUTE of `route` ({dst, gw, priority, table, scope, mtu, advmss}) via interface `index`:
    proto boot (3), as iproute2 and the reference (vishvananda/netlink) add routes; a table beyond the
    header's 8 bits in RTA_TABLE (the header then says main, as pyroute2 does)."""
    for key in _U32_ROUTE_FIELDS:
        value = route.get(key)
        if value is not None and not 0 <= value <= U32_MAX:
            raise CNIError(INVALID_CONFIG, f"route {route.get('dst')}: {key} {value} does not fit in 32 bits")
    _, _, rtmsg = netlink.messages()
    dst = ipaddress.ip_network(route["dst"])
    table = route.get("table") or 0
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["src_len"], msg["tos"] = (
        socket.AF_INET if dst.version == 4 else socket.AF_INET6, dst.prefixlen, 0, 0)
    msg["table"] = table if 0 < table < 255 else RT_TABLE_MAIN
    msg["proto"], msg["scope"], msg["type"], msg["flags"] = RTPROT_BOOT, route.get("scope") or 0, RTN_UNICAST, 0
    attrs: list = [("RTA_DST", str(dst.network_address))] if dst.prefixlen else []
    attrs.append(("RTA_OIF", index))
    if route.get("gw"):
        attrs.append(("RTA_GATEWAY", route["gw"]))
    if table:
        attrs.append(("RTA_TABLE", table))
    if route.get("priority"):
        attrs.append(("RTA_PRIORITY", route["priority"]))
    metrics = [(name, route[key]) for key, name in (("advmss", "RTAX_ADVMSS"), ("mtu", "RTAX_MTU")) if route.get(key)]
    if metrics:
        attrs.append(("RTA_METRICS", {"attrs": metrics}))
    msg["attrs"] = attrs
    return msg


def _failed(code: int) -> str:
    return os.strerror(code) if code > 0 else f"error {code}"


def random_mac() -> str:
    """A locally administered unicast MAC."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & ~_MAC_MULTICAST) | _MAC_LOCAL
    return ":".join(f"{o:02x}" for o in octets)


# -- bridge ---------------------------------------------------------------------------------------


def ensure_bridge(nl: Handles, name: str, mtu: int, promisc: bool, vlan_filtering: bool) -> Link:
    """Create the bridge if needed (reference `ensureBridge`), up, accept_ra=0, right kind.

    A new bridge gets an explicit MAC, which pins it (addr_assign_type SET): otherwise the bridge
    takes the lowest MAC of its ports and changes as ports come and go.
    """
    link = nl.get_link(name)
    if link is None:
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "address": random_mac()}
        if mtu:
            kwargs["mtu"] = mtu
        if vlan_filtering:
            kwargs["br_vlan_filtering"] = 1
        try:
            nl.ipr.link("add", **kwargs)
        except netlink.errors() as exc:
            code = netlink.error_code(exc)
            if code == errno.EOPNOTSUPP and vlan_filtering:
                raise CNIError(KERNEL, f"failed to create bridge {name!r} with VLAN filtering",
                               "the kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)") from None
            if code != errno.EEXIST:  # EEXIST: a concurrent ADD created it first
                raise CNIError(KERNEL, f"failed to create bridge {name!r}", str(exc)) from None
        link = nl.get_link(name)
        if link is None:
            raise CNIError(KERNEL, f"bridge {name!r} vanished right after it was created")
    if link.kind != "bridge":
        raise CNIError(KERNEL, f"{name!r} already exists but is not a bridge", f"kind {link.kind or 'unknown'!r}")
    write_sysctl(f"net/ipv6/conf/{name}/accept_ra", "0")  # we own the routes of this interface
    if not (vlan_filtering or (promisc and not link.promisc) or not link.flags & IFF_UP):
        return link  # the usual case: nothing to change
    with kernel(f"configure bridge {name!r}"):
        if vlan_filtering:
            nl.ipr.link("set", index=link.index, kind="bridge", br_vlan_filtering=1)
        if promisc and not link.promisc:
            nl.ipr.link("set", index=link.index, flags=IFF_PROMISC, change=IFF_PROMISC)
        if not link.flags & IFF_UP:
            nl.ipr.link("set", index=link.index, state="up")
    return nl.get_link(name) or link


def pin_mac(nl: Handles, link: Link) -> None:
    """Reference `ensureAddr`: set the bridge's MAC to itself so it no longer follows its ports."""
    with kernel(f"pin the MAC of {link.name!r}"):
        (code,) = nl.channel.run((link_message(link.index, attrs=[("IFLA_ADDRESS", link.mac)]), RTM_NEWLINK, 0))
    if code:
        raise CNIError(KERNEL, f"failed to pin the MAC of {link.name!r}", _failed(code))


def ensure_address(nl: Handles, link: Link, iface: str, force: bool) -> None:
    """Put a gateway address on the bridge (reference `ensureAddr` semantics).

    Present already: nothing to do (a concurrent ADD may have added it first: EEXIST is fine).
    A different IPv4 address, or an overlapping IPv6 one, is an error unless `force`, which
    replaces it. IPv6 addresses are added with IFA_F_NODAD: nothing ever waits for DAD.
    """
    want = ipaddress.ip_interface(iface)
    with kernel(f"list the addresses of {link.name!r}"):
        current = [a for a in addresses(nl, link.index) if ipaddress.ip_interface(a.address).version == want.version]
    for addr in current:
        have = ipaddress.ip_interface(addr.address)
        if have == want:
            return
        if want.version == 4 or have.network.overlaps(want.network):
            if not force:
                raise CNIError(KERNEL, f"{link.name!r} already has an IP address different from {want}", str(have))
            with kernel(f"remove {have} from {link.name!r}"):
                (code,) = nl.channel.run((address_message(link.index, str(have), delete=True), RTM_DELADDR, 0))
            if code and code != errno.EADDRNOTAVAIL:  # gone already: fine
                raise CNIError(KERNEL, f"failed to remove {have} from {link.name!r}", _failed(code))
    add_address(nl, link.index, str(want), nodad=True, tolerate_exists=True, what=link.name)


def addresses(nl: Handles, index: int) -> list[Address]:
    return [Address(address, flags) for address, _family, flags in nl.channel.addresses(index)]


def add_address(nl: Handles, index: int, iface: str, *, nodad: bool, tolerate_exists: bool = False,
                what: str = "") -> None:
    with kernel(f"add address {iface} to {what or index}"):
        (code,) = nl.channel.run((address_message(index, iface, nodad=nodad), RTM_NEWADDR, CREATE))
    if code and not (tolerate_exists and code == errno.EEXIST):
        raise CNIError(KERNEL, f"failed to add address {ipaddress.ip_interface(iface)} to {what or index}", _failed(code))


# -- veth -----------------------------------------------------------------------------------------


def create_veth(nl: Handles, pod: Pod, host_name: str, ifname: str, bridge: Link, mtu: int, mac: str,
                alias: str) -> Link:
    """Create the pair in one request: host end enslaved, up, and its peer `ifname` in the pod.

    Returns the host end. Fails (101) when `ifname` already exists in the pod netns or
    `host_name` exists here (SPEC.md "ADD": the interface must not exist yet).
    """
    with kernel(f"create veth pair {host_name!r}/{ifname!r}"):
        (code,) = nl.channel.run((veth_message(host_name, ifname, pod.fd, bridge.index, mtu, mac), RTM_NEWLINK, CREATE))
    if code == errno.EEXIST:
        if nl.get_link(host_name) is not None:
            raise CNIError(KERNEL, f"host veth {host_name!r} already exists",
                           "a previous attachment with the same container ID and ifname was not deleted")
        raise CNIError(KERNEL, f"container interface {ifname!r} already exists in {pod.path}")
    if code:
        raise CNIError(KERNEL, f"failed to create veth pair {host_name!r}/{ifname!r}", _failed(code))
    # From here on the pair exists: any failure of this function removes it before raising (the
    # caller registers its undo only once it has the link - an undo for a name that was never
    # created could delete another attachment's veth).
    try:
        faults.point("bridge.veth.created")
        link = nl.get_link(host_name)
        if link is None:
            raise CNIError(KERNEL, f"veth {host_name!r} vanished right after it was created")
        with kernel(f"set the alias of {host_name!r}"):
            (code,) = nl.channel.run((link_message(link.index, attrs=[("IFLA_IFALIAS", alias)]), RTM_NEWLINK, 0))
        if code:
            raise CNIError(KERNEL, f"failed to set the alias of {host_name!r}", _failed(code))
        link.alias = alias
        write_sysctl(f"net/ipv6/conf/{host_name}/accept_ra", "0", only_if_different=False)
    except BaseException:
        with contextlib.suppress(Exception):
            delete_link(nl, host_name)
        raise
    return link


def configure_port(nl: Handles, link: Link, hairpin: bool, isolated: bool) -> None:
    """Bridge port flags: hairpin (IFLA_BRPORT_MODE) and port isolation (IFLA_BRPORT_ISOLATED)."""
    if not hairpin and not isolated:
        return  # both default to off on a new port
    with kernel(f"set bridge port options of {link.name!r}"):
        nl.ipr.brport("set", index=link.index, mode=int(hairpin), isolated=int(isolated))


def configure_vlans(nl: Handles, link: Link, vlan: int, trunk: list[int], preserve_default: bool) -> None:
    """Reference semantics: an access port (untagged pvid `vlan`) or a trunk (tagged `trunk` ids);
    the default VLAN 1 is removed from the port unless `preserveDefaultVlan`."""
    if not vlan and not trunk:
        return
    from pyroute2.netlink.rtnl.ifinfmsg import BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED

    ipr = nl.ipr
    with kernel(f"set the VLANs of {link.name!r}"):
        if not preserve_default:
            with contextlib.suppress(*netlink.errors()):
                ipr.vlan_filter("del", index=link.index, vlan_info={"vid": 1})
        if vlan:
            ipr.vlan_filter("add", index=link.index,
                            vlan_info={"vid": vlan, "flags": BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED})
        for vid in trunk:
            ipr.vlan_filter("add", index=link.index, vlan_info={"vid": vid})


def ensure_vlan_gateway(nl: Handles, bridge: Link, name: str, peer_name: str, vlan: int,
                        preserve_default: bool) -> Link:
    """Reference `ensureVlanInterface`: with `vlan` + `isGateway` the gateway address lives on a
    host-side veth `<bridge>.<vlan>` whose peer is an access port of that VLAN on the bridge."""
    link = nl.get_link(name)
    if link is not None:
        return link
    ipr = nl.ipr
    kwargs: dict[str, Any] = {"ifname": peer_name, "kind": "veth", "master": bridge.index,
                              "flags": IFF_UP, "change": IFF_UP, "peer": {"ifname": name}}
    if bridge.mtu:
        kwargs["mtu"] = bridge.mtu
        kwargs["peer"]["mtu"] = bridge.mtu
    try:
        ipr.link("add", **kwargs)
    except netlink.errors() as exc:
        if netlink.error_code(exc) != errno.EEXIST:
            raise CNIError(KERNEL, f"failed to create the VLAN gateway {name!r}", str(exc)) from None
    port, link = nl.get_link(peer_name), nl.get_link(name)
    if port is None or link is None:
        raise CNIError(KERNEL, f"VLAN gateway {name!r} vanished right after it was created")
    configure_vlans(nl, port, vlan, [], preserve_default)
    with kernel(f"set {name!r} up"):
        ipr.link("set", index=link.index, state="up")
    return nl.get_link(name) or link


def delete_link(nl: Handles, name: str) -> bool:
    """Delete a host link by name; False when it did not exist (DEL is idempotent)."""
    with kernel(f"delete link {name!r}"):
        (code,) = nl.channel.run((link_message(attrs=[("IFLA_IFNAME", name)]), RTM_DELLINK, 0))
    if code in (errno.ENODEV, errno.ENOENT):
        return False
    if code:
        raise CNIError(KERNEL, f"failed to delete link {name!r}", _failed(code))
    return True


# -- pod side -------------------------------------------------------------------------------------


def pod_configure(pod: Pod, link: Link, ips: list[str], routes: list[dict], up: bool, nodad: bool) -> None:
    """Addresses, link up, then routes on the container interface `link` (reference `ConfigureIface`),
    in one datagram: the kernel runs them in this order (a gateway route needs the link up) and
    answers each.

    `routes` are dicts {dst, gw, priority, table, scope, mtu, advmss}; a route already present is fine
    (ECMP: the reference appends a nexthop; an identical route is not an error). Call inside `pod`.
    """
    nl = pod.nl
    assert nl is not None, "pod_configure runs inside the pod"
    steps: list[tuple[str, Any, int, int, bool]] = []  # (what failed, message, type, flags, EEXIST is fine)
    for iface in ips:
        steps.append((f"failed to add address {ipaddress.ip_interface(iface)} to {link.name}",
                      address_message(link.index, iface, nodad=nodad), RTM_NEWADDR, CREATE, False))
    if up:
        steps.append((f"failed to set {link.name!r} up", link_message(link.index, flags=IFF_UP, change=IFF_UP),
                      RTM_NEWLINK, 0, False))
    for route in routes:
        via = f" via {route.get('gw')}" if route.get("gw") else ""
        steps.append((f"failed to add route {ipaddress.ip_network(route['dst'])}{via} dev {link.name}",
                      route_message(link.index, route), RTM_NEWROUTE, CREATE, True))
    if not steps:
        return
    with kernel(f"configure {link.name!r} in {pod.path}"):
        codes = nl.channel.run(*[(msg, mtype, flags) for _, msg, mtype, flags, _ in steps])
    for (what, _msg, _mtype, _flags, exists_ok), code in zip(steps, codes, strict=True):
        if code and not (exists_ok and code == errno.EEXIST):
            raise CNIError(KERNEL, what, _failed(code))


def routes(nl: Handles, index: int | None = None) -> list[RouteInfo]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in nl.ipr.get_routes(family=family):
            if index is not None and msg.get("RTA_OIF") != index:
                continue
            dst = msg.get("RTA_DST")
            length = msg["dst_len"]
            if dst is None:
                dst = "0.0.0.0" if family == socket.AF_INET else "::"
            out.append(RouteInfo(dst=str(ipaddress.ip_network(f"{dst}/{length}", strict=False)),
                                 gw=msg.get("RTA_GATEWAY"), table=msg.get("RTA_TABLE") or msg["table"],
                                 priority=msg.get("RTA_PRIORITY") or 0))
    return out
