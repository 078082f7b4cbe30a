"""Link, address and route operations of the bridge plugin: the bridge, veth pairs, bridge ports
and VLANs, addresses and routes, on the node and (inside `netns.Pod`) in the pod.

Functions are thin: they translate one intent into netlink requests over the handles of `netlink`
and turn every netlink or OS failure into CNIError code 101 (pycni's "kernel operation failed",
SPEC.md "Error": codes 100+ are plugin-specific) naming the object at fault.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import random
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import faults
from ..spec.errors import INVALID_CONFIG, KERNEL, CNIError
from ..spec.result import U32_MAX
from . import netlink
from .netlink import IFF_PROMISC, IFF_UP, Link, kernel
from .sysctl import write_sysctl

if TYPE_CHECKING:
    from .netns import Pod


# IEEE 802: bit 0 of the first octet marks a multicast MAC, bit 1 a locally administered one
_MAC_MULTICAST, _MAC_LOCAL = 0x01, 0x02


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


def get_link(name: str, pod: Pod | None = None) -> Link | None:
    """The link `name` of the node (`pod` None) or of `pod`'s namespace (once `pod` has been
    entered), asked over that namespace's raw rtnetlink socket, whatever namespace the calling
    thread is in.

    Raw and decoded here (the attributes a Link holds): pyroute2 decodes every attribute of the
    answer - statistics included - which made the ten lookups of an ADD cost more than all its other
    netlink requests together."""
    if pod is None:
        return netlink.raw_get_link(netlink.node_raw(), name)
    if pod.raw is None:
        raise RuntimeError(f"get_link({name!r}, pod) before `with pod`: the pod has no rtnetlink socket yet")
    return netlink.raw_get_link(pod.raw, name)


def links_with_alias_prefix(prefix: str) -> list[Link]:
    with kernel("list links"):
        return [link for link in map(netlink.link_from_msg, netlink.node().get_links()) if link.alias.startswith(prefix)]


def random_mac() -> str:
    """A locally administered unicast MAC."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & ~_MAC_MULTICAST) | _MAC_LOCAL
    return ":".join(f"{o:02x}" for o in octets)


# -- bridge ---------------------------------------------------------------------------------------


def ensure_bridge(name: str, mtu: int, promisc: bool, vlan_filtering: bool) -> Link:
    """Create the bridge if needed (reference `ensureBridge`), up, accept_ra=0, right kind.

    A new bridge gets an explicit MAC, which pins it (addr_assign_type SET): otherwise the bridge
    takes the lowest MAC of its ports and changes as ports come and go.
    """
    ipr = netlink.node()
    link = get_link(name)
    if link is None:
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "address": random_mac()}
        if mtu:
            kwargs["mtu"] = mtu
        if vlan_filtering:
            kwargs["br_vlan_filtering"] = 1
        try:
            ipr.link("add", **kwargs)
        except netlink.errors() as exc:
            code = netlink.error_code(exc)
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
        netlink.node().link("set", index=link.index, address=link.mac)


def ensure_address(link: Link, iface: str, force: bool) -> None:
    """Put a gateway address on the bridge (reference `ensureAddr` semantics).

    Present already: nothing to do (a concurrent ADD may have added it first: EEXIST is fine).
    A different IPv4 address, or an overlapping IPv6 one, is an error unless `force`, which
    replaces it. IPv6 addresses are added with IFA_F_NODAD: nothing ever waits for DAD.
    """
    want = ipaddress.ip_interface(iface)
    ipr = netlink.node()
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
    ipr = ipr or netlink.node()
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
        from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD  # loaded with the handle `ipr`

        kwargs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **kwargs)
    except netlink.errors() as exc:
        if tolerate_exists and netlink.error_code(exc) == errno.EEXIST:
            return
        raise CNIError(KERNEL, f"failed to add address {ip} to {what or index}", str(exc)) from None




# -- veth -----------------------------------------------------------------------------------------


def create_veth(pod: Pod, host_name: str, ifname: str, bridge: Link, mtu: int, mac: str, alias: str) -> Link:
    """Create the pair in one request: host end enslaved, up, and its peer `ifname` in the pod.

    Returns the host end. Fails (101) when `ifname` already exists in the pod netns or
    `host_name` exists here (SPEC.md "ADD": the interface must not exist yet).
    """
    ipr = netlink.node()
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
    except netlink.errors() as exc:
        if netlink.error_code(exc) == errno.EEXIST:
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
        netlink.node().brport("set", index=link.index, mode=int(hairpin), isolated=int(isolated))


def configure_vlans(link: Link, vlan: int, trunk: list[int], preserve_default: bool) -> None:
    """Reference semantics: an access port (untagged pvid `vlan`) or a trunk (tagged `trunk` ids);
    the default VLAN 1 is removed from the port unless `preserveDefaultVlan`."""
    if not vlan and not trunk:
        return
    from pyroute2.netlink.rtnl.ifinfmsg import BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED

    ipr = netlink.node()
    with kernel(f"set the VLANs of {link.name!r}"):
        if not preserve_default:
            with contextlib.suppress(*netlink.errors()):
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
    ipr = netlink.node()
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
        netlink.node().link("del", ifname=name)
    except netlink.errors() as exc:
        if netlink.error_code(exc) in (errno.ENODEV, errno.ENOENT):
            return False
        raise CNIError(KERNEL, f"failed to delete link {name!r}", str(exc)) from None
    return True


# -- pod side -------------------------------------------------------------------------------------


def pod_configure(pod: Pod, ifname: str, ips: list[str], routes: list[dict], up: bool, nodad: bool) -> Link:
    """Addresses, link up, then routes on the container interface (reference `ConfigureIface`).

    `routes` are dicts {dst, gw, priority, table, scope, mtu, advmss}; routes are added after the
    link is up because the kernel refuses a gateway route on a down link.
    """
    ipr = pod.ipr
    link = get_link(ifname, pod)
    if link is None:
        raise CNIError(KERNEL, f"container interface {ifname!r} not found in {pod.path}")
    for iface in ips:
        add_address(link.index, iface, ipr, nodad=nodad, what=ifname)
    if up:
        with kernel(f"set {ifname!r} up"):
            ipr.link("set", index=link.index, state="up")
    for route in routes:
        add_route(ipr, link.index, route, ifname)
    return get_link(ifname, pod) or link


# rtnetlink carries a route's priority and table (RTA_PRIORITY, RTA_TABLE) and its metrics (RTAX_MTU,
# RTAX_ADVMSS) as u32: a larger number must be refused here, as a configuration error, before pyroute2
# fails to pack it (a struct.error, which would surface as an internal error).
_U32_ROUTE_FIELDS = ("mtu", "advmss", "priority", "table")


def add_route(ipr: Any, index: int, route: dict, ifname: str) -> None:
    for key in _U32_ROUTE_FIELDS:
        value = route.get(key)
        if value is not None and not 0 <= value <= U32_MAX:
            raise CNIError(INVALID_CONFIG, f"route {route.get('dst')}: {key} {value} does not fit in 32 bits")
    dst = ipaddress.ip_network(route["dst"])
    # proto boot, as iproute2 and the reference (vishvananda/netlink) add routes; pyroute2 says static
    kwargs: dict[str, Any] = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": index,
                              "family": socket.AF_INET if dst.version == 4 else socket.AF_INET6, "proto": "boot"}
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
    except netlink.errors() as exc:
        if netlink.error_code(exc) == errno.EEXIST:
            # ECMP: the reference appends a nexthop; an identical route already present is fine
            return
        via = f" via {route.get('gw')}" if route.get("gw") else ""
        raise CNIError(KERNEL, f"failed to add route {dst}{via} dev {ifname}", str(exc)) from None


def routes(ipr: Any, index: int | None = None) -> list[RouteInfo]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family):
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
