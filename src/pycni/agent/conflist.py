"""This node's network configuration list, rendered from its pod CIDR(s) and written atomically.

The conflist is pycni's bridge with pycni-host-local, then the reference `portmap` for hostPorts
(SPEC.md "Section 1: Network configuration format", a list of chained plugins). One IPAM range set
per pod CIDR, so a node with an IPv4 and an IPv6 pod CIDR gives every pod one address of each.

`ipMasq` is **false**, on purpose. The bridge plugin's ipMasq (like the reference's) masquerades
everything from the pod subnet whose destination is outside *this node's* subnet - which includes
the other nodes' pods. With host-gw routing that would hide the source address of every cross-node
pod-to-pod packet, breaking Kubernetes' "pods reach each other without NAT" rule (and anything that
looks at source addresses: NetworkPolicy, logs). Only the agent knows the whole cluster CIDR, so it
masquerades instead, and only traffic leaving the cluster (masq.py), as kindnet does.

`isDefaultGateway` gives each pod a default route per family via the bridge (and implies
`isGateway`: the bridge holds the gateway address and the node forwards). `hairpinMode` lets a pod
reach itself through its own Service. The IPAM `dataDir` defaults to the reference's
/var/lib/cni/networks (leases under `<dataDir>/<network name>/`).

The file is written only when its content changes: temp file in the same directory, fsync, rename,
fsync of the directory - a runtime reading the conf dir sees the old file or the new one, never half
of one. The runtime uses the alphabetically first file of its conf dir, hence `10-`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Sequence

from ..bridge.config import DEFAULT_BRIDGE
from ..ipam.config import DEFAULT_DATA_DIR

CONFLIST_NAME = "10-pycni.conflist"
NETWORK_NAME = "pycni"
# containerd 1.6/1.7 (libcni 1.1) and Debian 12's reference portmap stop at 1.0.0; a node whose
# runtime and portmap speak 1.1.0 (containerd 2.x, plugins >= 1.5) may set 1.1.0 for STATUS and GC.
DEFAULT_CNI_VERSION = "1.0.0"


def render(pod_cidrs: Sequence[str], *, network: str = NETWORK_NAME, bridge: str = DEFAULT_BRIDGE,
           data_dir: str = DEFAULT_DATA_DIR, cni_version: str = DEFAULT_CNI_VERSION, mtu: int = 0,
           portmap: bool = True, log_file: str = "", log_level: str = "") -> dict:
    """The conflist for a node owning `pod_cidrs` (one per family; IPv4 first in the output)."""
    if not pod_cidrs:
        raise ValueError("a node needs at least one pod CIDR")
    nets = sorted((ipaddress.ip_network(c, strict=True) for c in pod_cidrs), key=lambda n: n.version)
    if len({n.version for n in nets}) != len(nets):
        raise ValueError(f"at most one pod CIDR per IP family: {list(pod_cidrs)}")
    bridge_conf: dict = {
        "type": "pycni",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": False,  # the agent masquerades cluster egress itself: see the module docstring
        "hairpinMode": True,
    }
    if mtu:
        bridge_conf["mtu"] = mtu
    if log_file:
        bridge_conf["logFile"] = log_file
    if log_level:
        bridge_conf["logLevel"] = log_level
    bridge_conf["ipam"] = {
        "type": "pycni-host-local",
        "ranges": [[{"subnet": str(n)}] for n in nets],
        "dataDir": data_dir,
    }
    plugins = [bridge_conf]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": cni_version, "name": network, "plugins": plugins}


def dumps(conf: dict) -> str:
    return json.dumps(conf, indent=2) + "\n"


def write_atomic(path: str, text: str, mode: int = 0o644) -> bool:
    """Write `text` to `path` unless it already holds exactly that. Returns True when it wrote."""
    data = text.encode()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True
