"""The bridge plugin's verbs (SPEC.md "Section 2: Execution Protocol" - ADD, DEL, CHECK, STATUS, GC).

Orchestration only: kernel work is in `links` (and `netns`, `sysctl`, `probes`), firewall work in
`masquerade`, IPAM in `ipam_delegate`. ADD keeps a rollback stack: "if a later step fails, the plugin must undo what
it did" (SPEC.md "Section 4: Plugin Delegation" for IPAM: DEL the allocation before returning the
error) - every step that creates something pushes its undo, and any failure runs them in reverse.

Naming: the host veth is `veth` + 8 hex digits of a hash of (container ID, ifname), and carries
the alias `pycni:<network id>:<attachment key>:...`, so DEL and GC find it without the netns
(containerd sends a DEL with an empty CNI_NETNS, SPEC.md "DEL").
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging

from .. import faults
from ..spec.errors import (
    CHECK_FAILED,
    DELEGATE_FAILED,
    INVALID_CONFIG,
    INVALID_ENV,
    INVALID_NETNS,
    KERNEL,
    STATUS_DEGRADED,
    STATUS_NOT_AVAILABLE,
    CNIError,
)
from ..spec.gc import valid_attachments
from ..spec.request import Request
from ..spec.result import Interface, Result, Route
from . import ipam_delegate, masquerade
from .config import BridgeConf
from .netlink import Link

Config = BridgeConf
# CONVENTIONS.md "CNI_ARGS": IP is for the IPAM plugin (passed through), MAC is ours.
KNOWN_ARGS = frozenset({"IP", "MAC"})

log = logging.getLogger("pycni.bridge")


def host_veth_name(container_id: str, ifname: str) -> str:
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


def attachment(req: Request) -> masquerade.Attachment:
    return masquerade.Attachment(req.conf.name, req.container_id, req.ifname)


def alias_prefix(network: str) -> str:
    return f"pycni:{masquerade.network_id(network)}:"


# The kernel's IFLA_IFALIAS limit is IFALIASZ - 1 = 255 bytes *including* the terminating NUL that
# netlink strings carry (a 255-character alias is refused with ERANGE): at most 254 bytes of text.
MAX_ALIAS_BYTES = 254


def veth_alias(att: masquerade.Attachment) -> str:
    """`pycni:<network id>:<key>:` (all DEL and GC read: fixed length, always kept) followed by the
    readable part, cut to what the kernel accepts (in bytes: an ifname may be non-ASCII)."""
    text = f"{alias_prefix(att.network)}{att.key}:{att.network}:{att.ifname}:{att.container_id}"
    return text.encode()[:MAX_ALIAS_BYTES].decode(errors="ignore")


class Rollback:
    """Undo steps, run in reverse order when ADD fails; an undo that fails is logged, not raised."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, object]] = []

    def push(self, what: str, func) -> None:
        self.steps.append((what, func))

    def run(self) -> None:
        for what, func in reversed(self.steps):
            try:
                func()  # type: ignore[operator]
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                log.warning("rollback of %s failed: %s", what, exc)
        self.steps.clear()


# -- ADD ------------------------------------------------------------------------------------------


def add(req: Request) -> Result:
    """SPEC.md "ADD": bridge, veth pair (peer created in the pod netns), IPAM, gateway, masquerade."""
    from . import links, netlink, netns

    conf: BridgeConf = req.conf
    # Everything that can be refused without touching the node is refused first, so that a bad
    # request creates nothing (not even the bridge, which no rollback removes).
    conf.prev_result()
    local_ipam = ipam_delegate.precheck(req)
    undo = Rollback()
    try:
        pod = netns.Pod(req.netns)
    except netns.NetnsGone:
        raise CNIError(INVALID_ENV, "CNI_NETNS does not exist", req.netns) from None
    if pod.is_own():
        # The Go skel refuses this too (pkg/skel/skel.go, ns.CheckNetNS -> types.ErrInvalidNetNS), but
        # only after its ADD ran; here nothing has been touched yet. DEL does not use the namespace.
        pod.close()
        raise CNIError(INVALID_NETNS, "CNI_NETNS is the plugin's own network namespace",
                       f"{req.netns} would put the pod interface, its addresses and routes in the node")
    try:
        with netlink.handles(req.context) as nl:
            try:
                faults.point("bridge.add.start")
                ours, bridge, container = _plumb(req, conf, nl, pod, undo)
                pinned = None
                if conf.ipam_type:
                    ipam = ipam_delegate.add(req, local_ipam)
                    undo.push("IPAM allocation", lambda: ipam_delegate.delete(_as_verb(req, "DEL"), local_ipam))
                    faults.point("bridge.add.ipam")
                    pinned = _layer3(req, conf, nl, pod, bridge, container, ours, ipam, undo)
                elif not conf.disableContainerInterface:
                    with pod:
                        links.pod_configure(pod, container, [], [], up=True, nodad=True)
                _report_bridge_mac(nl, ours, pinned)
                if conf.dns is not None and conf.dns.to_dict():  # reference: the config's dns wins over IPAM's
                    ours.dns = conf.dns
                faults.point("bridge.add.done")
                return _chain(conf, ours)
            except BaseException:
                undo.run()
                raise
    finally:
        pod.close()


def _plumb(req: Request, conf: BridgeConf, nl, pod, undo: Rollback) -> tuple[Result, Link, Link]:
    """Bridge + veth + port options + spoof check; returns the L2 result [bridge, veth, ifname], the
    bridge and the pod interface."""
    from . import links

    att = attachment(req)
    mac = conf.container_mac(req.cni_args.get("MAC"))
    bridge = links.ensure_bridge(nl, conf.bridge, conf.mtu, conf.promiscMode, conf.vlan_filtering)
    faults.point("bridge.add.bridge")
    host_name = host_veth_name(req.container_id, req.ifname)
    host = links.create_veth(nl, pod, host_name, req.ifname, bridge, conf.mtu, mac, veth_alias(att))
    undo.push(f"veth {host_name}", lambda: links.delete_link(nl, host_name))
    faults.point("bridge.add.veth")
    links.configure_port(nl, host, conf.hairpinMode, conf.portIsolation)
    links.configure_vlans(nl, host, conf.vlan, conf.trunk_vlans(), conf.preserveDefaultVlan)
    with pod:
        container = links.get_link(pod.nl, req.ifname)
    if container is None:
        raise CNIError(KERNEL, f"{req.ifname!r} vanished from {req.netns}")
    if conf.macspoofchk:
        masquerade.spoofcheck_setup(att, host_name, container.mac)
        undo.push("MAC spoof check", lambda: masquerade.spoofcheck_teardown(att))
        faults.point("bridge.add.spoofchk")
    mtu = conf.mtu or None
    return Result(interfaces=[
        Interface(name=bridge.name, mac=bridge.mac),
        Interface(name=host.name, mac=host.mac, mtu=mtu),
        Interface(name=req.ifname, mac=container.mac, mtu=mtu, sandbox=req.netns),
    ]), bridge, container


def _layer3(req: Request, conf: BridgeConf, nl, pod, bridge: Link, container: Link, ours: Result, ipam: Result,
            undo: Rollback) -> Link | None:
    """Addresses and routes from IPAM in the pod, gateway on the bridge, forwarding, masquerade.
    Returns the bridge as it is once its MAC is pinned (None when there is no gateway)."""
    from . import links, sysctl

    if not ipam.ips:
        raise CNIError(DELEGATE_FAILED, "IPAM plugin returned no IP configuration")
    ours.ips, ours.routes, ours.dns = ipam.ips, list(ipam.routes), ipam.dns
    gateways = plan_gateways(ours, conf, container_index=2)
    has_v6 = any(ip.family == 6 for ip in ours.ips)
    with pod:
        sysctl.pod_sysctls(req.ifname, conf.enabledad, has_v6)
        links.pod_configure(pod, container, [ip.address for ip in ours.ips], container_routes(ours),
                            up=True, nodad=not conf.enabledad)
    faults.point("bridge.add.pod")
    pinned = None
    if gateways:
        target = _gateway_link(nl, conf, ours, bridge)
        for gw in gateways:
            links.ensure_address(nl, target, str(gw), conf.forceAddress)
        current = links.get_link(nl, target.name) or target  # adding the port may have changed its MAC
        links.pin_mac(nl, current)
        pinned = current if target is bridge else None
        for version in sorted({gw.version for gw in gateways}):
            sysctl.enable_forwarding(version)
        faults.point("bridge.add.gateway")
    if conf.ipMasq:
        att = attachment(req)
        masquerade.pick(conf.ipMasqBackend).setup(att, [ipaddress.ip_interface(ip.address) for ip in ours.ips])
        undo.push("masquerade", lambda: masquerade.teardown(att, conf.ipMasqBackend))
        faults.point("bridge.add.masq")
    return pinned


def _gateway_link(nl, conf: BridgeConf, ours: Result, bridge: Link) -> Link:
    """The bridge, or with `vlan` the reference's VLAN gateway `<bridge>.<vlan>` (added to the result)."""
    from . import links

    if not conf.vlan:
        return bridge
    peer = host_veth_name(conf.bridge, str(conf.vlan))
    link = links.ensure_vlan_gateway(nl, bridge, conf.vlan_gateway_name, peer, conf.vlan, conf.preserveDefaultVlan)
    ours.interfaces.append(Interface(name=link.name, mac=link.mac))
    return link


def plan_gateways(result: Result, conf: BridgeConf, container_index: int) -> list:
    """Reference `calcGateways`: every IP belongs to the container interface; with isGateway a
    missing gateway is the subnet's first address; with isDefaultGateway a default route per family
    unless IPAM already gave one. Returns the gateway interfaces to put on the bridge."""
    gateways = []
    default_done: set[int] = set()
    for ip in result.ips:
        ip.interface = container_index
        iface = ipaddress.ip_interface(ip.address)
        if ip.gateway is None and conf.isGateway:
            ip.gateway = str(iface.network.network_address + 1)
        if conf.isDefaultGateway and iface.version not in default_done:
            default = "0.0.0.0/0" if iface.version == 4 else "::/0"
            if not any(r.dst == default and r.gw for r in result.routes):
                result.routes.append(Route(dst=default, gw=ip.gateway))
            default_done.add(iface.version)
        if conf.isGateway:
            gw = ipaddress.ip_interface(f"{ip.gateway}/{iface.network.prefixlen}")
            if gw not in gateways:
                gateways.append(gw)
    return gateways


def container_routes(result: Result) -> list[dict]:
    """Reference `ConfigureIface`: a route without gw goes via the first gateway of its family."""
    first_gw: dict[int, str] = {}
    for ip in result.ips:
        if ip.gateway and ip.family not in first_gw:
            first_gw[ip.family] = ip.gateway
    out = []
    for r in result.routes:
        route = r.model_dump()
        route["gw"] = r.gw or first_gw.get(r.family)
        out.append(route)
    return out


def _report_bridge_mac(nl, ours: Result, pinned: Link | None) -> None:
    """The bridge's MAC may have changed when the port or the address was added: report it as it is
    now - as the gateway step pinned it, else as the kernel says. (A veth keeps the MAC it was
    created with: the host end's, reported by create_veth, needs no second look.)"""
    from . import links

    current = pinned or links.get_link(nl, ours.interfaces[0].name)
    if current is not None:
        ours.interfaces[0].mac = current.mac


def _chain(conf: BridgeConf, ours: Result) -> Result:
    """SPEC.md "Chained Plugins": keep what a previous plugin reported, append ours after it."""
    prev = conf.prev_result()
    if prev is None:
        return ours
    offset = len(prev.interfaces)
    for ip in ours.ips:
        if ip.interface is not None:
            ip.interface += offset
    dns = ours.dns if ours.dns.to_dict() else prev.dns
    return Result(interfaces=prev.interfaces + ours.interfaces, ips=prev.ips + ours.ips,
                  routes=prev.routes + ours.routes, dns=dns)


def _as_verb(req: Request, verb: str) -> Request:
    import dataclasses

    return dataclasses.replace(req, env=dataclasses.replace(req.env, command=verb))


# -- DEL ------------------------------------------------------------------------------------------


def delete(req: Request) -> None:
    """SPEC.md "DEL": best effort and idempotent, with or without CNI_NETNS (which is not needed:
    the host veth is found by name; deleting it deletes its pod peer). Every step runs; the first
    error is raised at the end."""
    from . import netlink

    conf: BridgeConf = req.conf
    att = attachment(req)
    errors: list[CNIError] = []
    faults.point("bridge.del.start")
    with netlink.handles(req.context) as nl:
        _collect(errors, lambda: _delete_veth(nl, att, host_veth_name(req.container_id, req.ifname)))
    faults.point("bridge.del.veth")
    if conf.ipam_type:
        _collect(errors, lambda: ipam_delegate.delete(req))
        faults.point("bridge.del.ipam")
    if conf.ipMasq:
        errors += masquerade.teardown(att, conf.ipMasqBackend)
        faults.point("bridge.del.masq")
    if conf.macspoofchk:
        _collect(errors, lambda: masquerade.spoofcheck_teardown(att))
    if errors:
        raise errors[0]


def _delete_veth(nl, att: masquerade.Attachment, name: str) -> None:
    from . import links

    link = links.get_link(nl, name)  # the channel's lookup: no pyroute2 import when the veth is gone
    if link is not None and link.alias.startswith(alias_prefix(att.network) + att.key):
        links.delete_link(nl, name)
    elif link is not None and link.kind == "veth" and not link.alias:
        # ADD names the veth after (container ID, ifname) and sets its alias right after creating it
        # (the kernel ignores IFLA_IFALIAS in RTM_NEWLINK): a veth of this name without an alias is
        # an ADD that died in between. Another attachment cannot own the name: it would need the same
        # container ID and ifname, hence the same pod interface.
        log.warning("deleting %s: no alias, left by an ADD that did not finish", name)
        links.delete_link(nl, name)
    elif link is not None:
        log.warning("not deleting %s: its alias %r is not this attachment's", name, link.alias)


def _collect(errors: list[CNIError], func) -> None:
    try:
        func()
    except CNIError as err:
        errors.append(err)


# -- CHECK ----------------------------------------------------------------------------------------


def check(req: Request) -> None:
    """SPEC.md "CHECK": compare the node and the pod with prevResult; IPAM CHECK first."""
    from . import netlink

    conf: BridgeConf = req.conf
    prev = conf.prev_result()
    if prev is None:
        raise CNIError(INVALID_CONFIG, "prevResult is required for CHECK")
    if conf.ipam_type:
        ipam_delegate.check(req)
    bridge_if = next((i for i in prev.interfaces if i.name == conf.bridge and not i.sandbox), None)
    cont_if = next((i for i in prev.interfaces if i.name == req.ifname and i.sandbox), None)
    if bridge_if is None or cont_if is None:
        raise CNIError(CHECK_FAILED, "prevResult lacks the bridge or the container interface")
    if cont_if.sandbox != req.netns:
        raise CNIError(CHECK_FAILED, "sandbox in prevResult does not match CNI_NETNS", cont_if.sandbox)
    with netlink.handles(req.context) as nl:
        _check_links(req, conf, nl, prev, bridge_if, cont_if)


def _check_links(req: Request, conf: BridgeConf, nl, prev: Result, bridge_if: Interface, cont_if: Interface) -> None:
    from . import links, netns

    bridge = _expect(links.get_link(nl, conf.bridge), bridge_if, "bridge", conf.bridge)
    if bridge.promisc != conf.promiscMode:
        raise CNIError(CHECK_FAILED, f"promiscuous mode of {conf.bridge!r} is {bridge.promisc}")
    try:
        pod = netns.Pod(req.netns)
    except netns.NetnsGone:
        raise CNIError(CHECK_FAILED, "CNI_NETNS does not exist", req.netns) from None
    try:
        with pod:
            container = _expect(links.get_link(pod.nl, req.ifname), cont_if, "veth", req.ifname)
            _check_ips_routes(pod.nl, container, prev, prev.interfaces.index(cont_if))
    finally:
        pod.close()
    host = _expect(links.get_link(nl, host_veth_name(req.container_id, req.ifname)), None, "veth", "host veth")
    wanted = next((i for i in prev.interfaces if i.name == host.name), None)
    if wanted is None or (wanted.mac and wanted.mac != host.mac):
        raise CNIError(CHECK_FAILED, f"host veth {host.name!r} is not the one in prevResult")
    if host.master != bridge.index or host.peer_index != container.index or container.peer_index != host.index:
        raise CNIError(CHECK_FAILED, f"{host.name!r} is not the peer of {req.ifname!r} on {conf.bridge!r}")


def _expect(link, iface: Interface | None, kind: str, what: str):
    if link is None:
        raise CNIError(CHECK_FAILED, f"{what!r} not found")
    if link.kind != kind:
        raise CNIError(CHECK_FAILED, f"{what!r} is a {link.kind or 'device'}, not a {kind}")
    if iface is not None and iface.mac and iface.mac.lower() != link.mac.lower():
        raise CNIError(CHECK_FAILED, f"MAC of {what!r} is {link.mac}, prevResult says {iface.mac}")
    return link


def _check_ips_routes(pod_nl, container, prev: Result, index: int) -> None:
    from . import links

    have = {str(ipaddress.ip_interface(a.address)) for a in links.addresses(pod_nl, container.index)}
    for ip in prev.ips:
        if ip.interface == index and ip.address not in have:
            raise CNIError(CHECK_FAILED, f"address {ip.address} not found on {container.name!r}")
    present = links.routes(pod_nl)
    for r in prev.routes:
        gw = r.gw
        if not any(p.dst == r.dst and (gw is None or p.gw == gw) for p in present):
            raise CNIError(CHECK_FAILED, f"route {r.dst}{' via ' + gw if gw else ''} not found in the pod")


# -- STATUS / GC ----------------------------------------------------------------------------------


def status(req: Request) -> None:
    """SPEC.md "STATUS": code 50 (cannot ADD) when rtnetlink does not answer, we may not create links,
    the bridge name is taken by another kind of link, the masquerade backend is missing, or IPAM is
    not ready (store not writable, pool exhausted: IPAM STATUS is forwarded); code 51 when this
    network's attachments exist but their bridge is gone or down or they are no longer its ports
    (existing containers have lost connectivity). pyroute2 is only imported when veths exist."""
    from . import probes

    conf: BridgeConf = req.conf
    try:
        kind = probes.link_kind_raw(conf.bridge)
    except CNIError as err:
        raise CNIError(STATUS_NOT_AVAILABLE, err.msg, err.details) from None
    if kind not in (None, "bridge"):
        raise CNIError(STATUS_NOT_AVAILABLE, f"{conf.bridge!r} exists and is not a bridge", f"kind {kind!r}")
    if kind is None and not probes.can_admin_network():
        raise CNIError(STATUS_NOT_AVAILABLE, f"cannot create bridge {conf.bridge!r}: no CAP_NET_ADMIN")
    if conf.ipMasq:
        try:
            masquerade.pick(conf.ipMasqBackend)
        except CNIError as err:
            raise CNIError(STATUS_NOT_AVAILABLE, err.msg, err.details) from None
    if conf.ipam_type:
        ipam_delegate.status(req)
    _status_of_attachments(req, conf)


def _status_of_attachments(req: Request, conf: BridgeConf) -> None:
    from . import links, netlink, probes

    if not any(name.startswith("veth") for name in probes.host_link_names()):
        return  # no host veth at all: no attachment of ours can be cut off
    with netlink.handles(req.context) as nl:
        attached = links.links_with_alias_prefix(nl, alias_prefix(conf.name))
        bridge = links.get_link(nl, conf.bridge) if attached else None
    if not attached:
        return
    if bridge is None or not bridge.flags & links.IFF_UP:
        state = "missing" if bridge is None else "down"
        raise CNIError(STATUS_DEGRADED, f"bridge {conf.bridge!r} is {state}: {len(attached)} attachment(s) of "
                       f"network {conf.name!r} have no connectivity", ", ".join(v.name for v in attached)[:500])
    cut = [v.name for v in attached if v.master != bridge.index or not v.flags & links.IFF_UP]
    if cut:
        raise CNIError(STATUS_DEGRADED, f"{len(cut)} host veth(s) of network {conf.name!r} are down or not "
                       f"ports of {conf.bridge!r}: those containers have no connectivity", ", ".join(cut)[:500])


def gc(req: Request) -> None:
    """SPEC.md "GC": remove the leases (IPAM GC), host veths and masquerade/spoof-check entries of every
    attachment of this network that is not valid (pycni.spec.gc: the one reading of the list, which
    IPAM shares). The whole request is validated before anything is removed: the list, this config
    and, when in-process, the IPAM config. IPAM goes first, so a delegate that refuses the request
    (or cannot GC, like host-local 1.1.1) leaves links and leases as they were; after it, links and
    rules are removed going on past errors. docs/gc.md."""
    from . import links, netlink

    conf: BridgeConf = req.conf
    valid = valid_attachments(req.raw)
    if conf.ipam_type:
        ipam_delegate.precheck(req)
        ipam_delegate.gc(req)
    keys = {masquerade.Attachment(conf.name, cid, ifname).key for cid, ifname in valid}
    errors: list[CNIError] = []
    prefix = alias_prefix(conf.name)
    with netlink.handles(req.context) as nl:
        try:
            stale = [link for link in links.links_with_alias_prefix(nl, prefix)
                     if link.alias[len(prefix):].split(":", 1)[0] not in keys]
        except CNIError as err:
            errors.append(err)
            stale = []
        for link in stale:
            _collect(errors, lambda name=link.name: links.delete_link(nl, name))
    errors += masquerade.gc(conf.name, valid)
    _collect(errors, lambda: masquerade.spoofcheck_gc(conf.name, valid))
    if errors:
        raise CNIError(errors[0].code, errors[0].msg,
                       "; ".join(f"{e.msg}: {e.details}" for e in errors)[:1000])
