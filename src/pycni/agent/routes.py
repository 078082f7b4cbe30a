"""host-gw routing: a route to every other node's pod CIDR via that node's address.

Every route the agent makes carries the routing protocol number **156 (0x9c, `RTPROT_PYCNI`)**, a
value unassigned in iproute2's rt_protos (0-4 kernel/boot/static, 8-18 and 42/99/186-192 routing
daemons). It is how the agent knows its own routes: it lists, replaces and deletes only routes of
that protocol in the main table, so routes made by an administrator, the kernel, DHCP or another
CNI are never touched - even one to the same destination (then the agent reports a conflict and
leaves it). See them with `ip route show proto 156` (`ip -6 route show proto 156`).

Reconciliation is a pure plan (`plan`) over two maps dst -> next hop - the routes we have and the
routes we want - applied by `apply`: missing routes are added, changed next hops replaced, routes of
nodes that left (or whose CIDR or address changed) deleted. The next hop must be directly reachable
(nodes on one L2 segment, as kind's docker network); a node that is not shows up as an error.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from .nodes import Node

RTPROT_PYCNI = 156
MAIN_TABLE = 254

log = logging.getLogger("pycni.agent")


@dataclass(frozen=True, order=True)
class Route:
    dst: str
    via: str


@dataclass
class Plan:
    add: list[Route] = field(default_factory=list)
    replace: list[Route] = field(default_factory=list)
    delete: list[Route] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.add or self.replace or self.delete)

    def __str__(self) -> str:
        parts = [f"{verb} {r.dst} via {r.via}" for verb, rs in (("add", self.add), ("replace", self.replace),
                                                                  ("delete", self.delete)) for r in rs]
        return "; ".join(parts) or "no change"


@dataclass
class Desired:
    routes: dict[str, str]  # dst -> next hop
    problems: list[str] = field(default_factory=list)


def desired(nodes: Iterable[Node], self_name: str) -> Desired:
    """The routes this node should have: each other node's pod CIDRs via its address of that family.
    Nodes are taken in name order, so when two claim overlapping CIDRs the choice is stable."""
    nodes = sorted(nodes, key=lambda n: n.name)
    me = next((n for n in nodes if n.name == self_name), None)
    own = [ipaddress.ip_network(c) for c in (me.pod_cidrs if me else ())]
    taken: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [(n, self_name) for n in own]
    out = Desired(routes={})
    for node in nodes:
        if node.name == self_name:
            continue
        for cidr in node.pod_cidrs:
            net = ipaddress.ip_network(cidr)
            via = node.address_for(net.version)
            if via is None:
                out.problems.append(f"node {node.name}: no IPv{net.version} address for pod CIDR {cidr}")
                continue
            clash = next((owner for other, owner in taken if other.version == net.version and other.overlaps(net)),
                         None)
            if clash is not None:
                out.problems.append(f"node {node.name}: pod CIDR {cidr} overlaps node {clash}'s; no route")
                continue
            taken.append((net, node.name))
            out.routes[str(net)] = via
    return out


def plan(current: dict[str, str], want: dict[str, str]) -> Plan:
    """What to do to turn `current` (our routes now) into `want`. Pure."""
    p = Plan()
    for dst in sorted(want):
        if dst not in current:
            p.add.append(Route(dst, want[dst]))
        elif current[dst] != want[dst]:
            p.replace.append(Route(dst, want[dst]))
    p.delete = [Route(dst, via) for dst, via in sorted(current.items()) if dst not in want]
    return p


# -- the kernel (pyroute2) ----------------------------------------------------------------------------


def _ipr():
    from pyroute2 import IPRoute

    return IPRoute()


def current(ipr=None) -> dict[str, str]:
    """Our routes in the main table, both families: dst -> gateway."""
    own = ipr is None
    ipr = ipr or _ipr()
    try:
        out: dict[str, str] = {}
        for family in (2, 10):  # AF_INET, AF_INET6
            for msg in ipr.route("dump", family=family):
                if msg["proto"] != RTPROT_PYCNI:
                    continue
                table = msg.get_attr("RTA_TABLE") or msg["table"]
                if table != MAIN_TABLE:
                    continue
                dst = msg.get_attr("RTA_DST")
                gw = msg.get_attr("RTA_GATEWAY")
                if dst is None or gw is None:
                    continue
                out[str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))] = gw
        return out
    finally:
        if own:
            ipr.close()


@dataclass
class Applied:
    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _route_kw(route: Route) -> dict:
    net = ipaddress.ip_network(route.dst)
    return {"dst": str(net.network_address), "dst_len": net.prefixlen, "gateway": route.via,
            "proto": RTPROT_PYCNI, "table": MAIN_TABLE, "family": 2 if net.version == 4 else 10}


def apply(p: Plan, ipr=None) -> Applied:
    """Carry out a plan; one failing route never stops the others."""
    from pyroute2.netlink.exceptions import NetlinkError

    own = ipr is None
    ipr = ipr or _ipr()
    res = Applied()
    try:
        for verb, routes in (("del", p.delete), ("replace", p.replace), ("add", p.add)):
            for route in routes:
                kw = _route_kw(route)
                if verb == "del":
                    kw.pop("gateway")
                try:
                    ipr.route(verb, **kw)
                    res.done.append(f"{verb} {route.dst} via {route.via}")
                except NetlinkError as exc:
                    if verb == "del" and exc.code == errno.ESRCH:
                        continue  # already gone
                    if verb == "add" and exc.code == errno.EEXIST:
                        res.errors.append(f"route to {route.dst} exists and is not ours (proto != "
                                          f"{RTPROT_PYCNI}); left alone")
                    elif exc.code == errno.ENETUNREACH:
                        res.errors.append(f"{verb} {route.dst} via {route.via}: next hop not on a connected "
                                          "network (host-gw needs the nodes on one L2 segment)")
                    else:
                        res.errors.append(f"{verb} {route.dst} via {route.via}: {exc}")
        return res
    finally:
        if own:
            ipr.close()


def reconcile(want: dict[str, str]) -> tuple[Plan, Applied]:
    ipr = _ipr()
    try:
        p = plan(current(ipr), want)
        return p, apply(p, ipr) if not p.empty() else Applied()
    finally:
        ipr.close()


def remove_all() -> Applied:
    """Delete every route of ours (the agent's --cleanup)."""
    return reconcile({})[1]
