"""host-local verbs: ADD / DEL / CHECK / STATUS / GC as plain functions of a Request.

The same functions serve the `pycni-host-local` executable (through pycni.cli) and the bridge
plugin, which calls them in-process when its `ipam.type` is pycni-host-local.
"""

from __future__ import annotations

import os

from .. import faults
from ..spec.errors import CHECK_FAILED, IO_FAILURE, STATUS_NOT_AVAILABLE, CNIError
from ..spec.gc import valid_attachments
from ..spec.request import Request
from ..spec.result import DNS, Result
from . import allocator
from .config import Config, IPAMConfig, ipam_config
from .ranges import parse_ip
from .store import DiskStore, LeaseCache

__all__ = ["KNOWN_ARGS", "Config", "add", "check", "delete", "gc", "settings", "status"]

# CNI_ARGS keys host-local understands (the reference's IPAMArgs): IP=addr[,addr...]
KNOWN_ARGS = frozenset({"IP"})


def _leases(req: Request) -> LeaseCache | None:
    """The lease cache of a long-lived caller (the daemon), None for an exec'd plugin."""
    return req.context.leases if req.context is not None else None


def settings(req: Request[Config]) -> IPAMConfig:
    """The request's validated host-local settings. Every verb takes them as `cfg` when its caller
    already has them (the bridge validates before ADD touches the node), so they are built once."""
    return ipam_config(req.conf, req.cni_args)


def add(req: Request[Config], cfg: IPAMConfig | None = None) -> Result:
    """SPEC.md "ADD": one address per range set for (CNI_CONTAINERID, CNI_IFNAME), plus routes and DNS."""
    cfg = cfg or settings(req)
    dns = parse_resolv_conf(cfg.resolv_conf) if cfg.resolv_conf else DNS()
    with DiskStore(cfg.data_dir, cfg.network, cache=_leases(req)) as store:
        faults.point("ipam.add.locked")
        ips = allocator.allocate(cfg.range_sets, cfg.requested, store, req.container_id, req.ifname)
        faults.point("ipam.add.allocated")
    return Result(cniVersion=req.version, ips=ips, routes=list(cfg.routes), dns=dns)


def delete(req: Request[Config], cfg: IPAMConfig | None = None) -> None:
    """SPEC.md "DEL": release every lease of the attachment; nothing to release is success."""
    cfg = cfg or settings(req)
    store = DiskStore(cfg.data_dir, cfg.network, create=False, cache=_leases(req))
    if not store.exists():
        return  # DEL must not create state
    with store:
        faults.point("ipam.del.locked")
        allocator.release(store, req.container_id, req.ifname)


def check(req: Request[Config], cfg: IPAMConfig | None = None) -> None:
    """SPEC.md "CHECK": the attachment holds a lease, and every prevResult address in our ranges is its."""
    cfg = cfg or settings(req)
    store = DiskStore(cfg.data_dir, cfg.network, create=False, cache=_leases(req))
    if not store.exists():
        raise CNIError(CHECK_FAILED, f"host-local: failed to find address added by container {req.container_id}")
    with store:
        mine = {lease.ip for lease in allocator.owned_by(store.leases(), req.container_id, req.ifname)}
    if not mine:
        raise CNIError(CHECK_FAILED, f"host-local: failed to find address added by container {req.container_id}")
    prev = req.conf.prev_result()
    for ip in prev.ips if prev else []:
        addr = parse_ip(ip.address, "prevResult.ips")
        if any(rs.range_for(addr) for rs in cfg.range_sets) and addr not in mine:
            raise CNIError(CHECK_FAILED, f"host-local: {addr} is not leased to {req.container_id}/{req.ifname}")


def status(req: Request[Config], cfg: IPAMConfig | None = None) -> None:
    """SPEC.md "STATUS": code 50 when an ADD could not succeed - the store cannot be created or written,
    or a range set has no free address (every address leased). Creates nothing."""
    cfg = cfg or settings(req)
    store = DiskStore(cfg.data_dir, cfg.network, create=False, cache=_leases(req))
    if store.exists():
        try:
            with store:
                full = allocator.full_sets(cfg.range_sets, store.leases())
        except CNIError as err:
            raise CNIError(STATUS_NOT_AVAILABLE, "host-local: IPAM store unusable", f"{err.msg}: {err.details}") from None
        if not os.access(store.path, os.W_OK):
            raise CNIError(STATUS_NOT_AVAILABLE, "host-local: IPAM store is not writable", store.path)
        if full:
            raise CNIError(STATUS_NOT_AVAILABLE, "host-local: address pool exhausted",
                           "; ".join(f"range set {idx} ({cfg.range_sets[idx]}): every address is leased"
                                     for idx in full))
        return
    parent = cfg.data_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise CNIError(STATUS_NOT_AVAILABLE, "host-local: cannot create the IPAM store", cfg.data_dir)


def gc(req: Request[Config], cfg: IPAMConfig | None = None) -> None:
    """SPEC.md "GC": release every lease whose attachment is not valid (pycni.spec.gc reads the list,
    the same reading as the bridge's). List and config are validated before the store is touched."""
    valid = valid_attachments(req.raw)
    cfg = cfg or settings(req)
    store = DiskStore(cfg.data_dir, cfg.network, create=False, cache=_leases(req))
    if not store.exists():
        return
    with store:
        allocator.collect_garbage(store, valid)
        faults.point("ipam.gc.collected")


def parse_resolv_conf(path: str) -> DNS:
    """The reference's resolvConf option: nameserver / domain / search / options lines of a resolv.conf."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(1 << 16).splitlines()
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"failed to read resolvConf {path}", str(exc.strerror or exc)) from None
    dns = DNS()
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            dns.nameservers.append(values[0])
        elif key == "domain":
            dns.domain = values[0]
        elif key == "search":
            dns.search.extend(values)
        elif key == "options":
            dns.options.extend(values)
    return dns
