"""`pycni leases [--network N] [--data-dir D] [--address A] [--json]`: who holds which address.

One row per lease file of the host-local store: network, address, container ID, ifname, age (since
the lease file was written) and whether the attachment's host veth still exists in this network
namespace (pycni's veths name their attachment in their alias; a lease without one - made by the
reference plugins, or leaked - shows `veth: -`/`missing`). Reads only; takes no lock.

Data dirs: --data-dir, else the dataDirs of the conf dir's pycni networks, else host-local's default.
"""

from __future__ import annotations

import argparse

from ..ipam.config import DEFAULT_DATA_DIR
from . import attachments, netconfs, output, pools


def data_dirs(args) -> list[str]:
    if args.data_dir:
        return [args.data_dir]
    found = []
    for net in netconfs.load(args.conf_dir).networks:
        pool = pools.from_ipam(net.name, net.ipam) if net.ipam else None
        if pool is not None and pool.data_dir not in found:
            found.append(pool.data_dir)
    return found or [DEFAULT_DATA_DIR]


def collect(args) -> list[dict]:
    try:
        veths = {(v.network, v.container_id, v.ifname): v.name for v in attachments.veths()}
        veth_error = None
    except Exception as exc:  # noqa: BLE001 - no netlink here (a restricted container): say so per row
        veths, veth_error = {}, f"{type(exc).__name__}: {exc}"
    rows = []
    for data_dir in data_dirs(args):
        names = [args.network] if args.network else attachments.networks_in(data_dir)
        for network in names:
            for lease in attachments.leases(data_dir, network):
                if args.address and lease.address != args.address:
                    continue
                veth = veths.get((network, lease.container_id, lease.ifname))
                rows.append({"network": network, "address": lease.address, "containerID": lease.container_id,
                             "ifname": lease.ifname, "ageSeconds": round(lease.age, 1) if lease.age is not None else None,
                             "veth": veth, "vethExists": None if veth_error else veth is not None,
                             "dataDir": data_dir})
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pycni leases", description=__doc__.split("\n\n")[0])
    p.add_argument("--network", help="only this network")
    p.add_argument("--data-dir", help="the host-local dataDir (default: from --conf-dir)")
    p.add_argument("--address", help="only the lease of this address (who holds it?)")
    p.add_argument("--conf-dir", default=netconfs.DEFAULT_CONF_DIR, help="CNI conf dir (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    args = p.parse_args(argv)
    rows = collect(args)
    if args.json:
        output.dump({"leases": rows})
    else:
        output.table(["NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "AGE", "VETH"],
                     [[r["network"], r["address"], r["containerID"], r["ifname"], output.age(r["ageSeconds"]),
                       r["veth"] or ("?" if r["vethExists"] is None else "missing")] for r in rows])
    return 1 if args.address and not rows else 0
