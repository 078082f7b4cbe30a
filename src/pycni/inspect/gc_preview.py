"""`pycni gc --dry-run (--valid-from-cri SOCKET | --valid-attachments FILE | --valid-id ID...)`: what a
GC (SPEC.md "GC") would remove on this node, and `pycni gc ...` without --dry-run to do it.

For each pycni network of the conf dir (or --network), the attachments the node holds - lease files
of its host-local store, pycni host veths (inspect/attachments.py) - are compared with the valid
list: from the container runtime's CRI ListPodSandbox (every sandbox ID it still knows, any
ifname), from a file (a JSON list of {"containerID", "ifname"}, as in cni.dev/valid-attachments),
or from --valid-id. What is not valid is listed (--dry-run: nothing changes). Without --dry-run,
the plugin's own GC verb runs for each network with cni.dev/valid-attachments = the valid
attachments found - through the daemon when one answers (so its metrics count the run), else in
this process - and the command lists what is gone afterwards. Masquerade and spoof-check entries
of the removed attachments go with them (the GC verb removes them by attachment key).

A valid list that is empty while attachments exist would remove every attachment: the command
refuses that without --allow-empty (a wrong CRI socket must not wipe a node).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..spec.errors import CNIError
from ..spec.gc import attachment_list
from . import attachments, netconfs, output, pools


class Valid:
    """The valid list: exact (containerID, ifname) pairs, or container IDs (any ifname)."""

    def __init__(self, pairs: set[tuple[str, str]] | None = None, ids: set[str] | None = None, source: str = ""):
        self.pairs, self.ids, self.source = pairs, ids, source

    def __contains__(self, att: tuple[str | None, str | None]) -> bool:
        cid, ifname = att
        if self.ids is not None:
            return cid in self.ids
        return (cid, ifname) in (self.pairs or set())

    def empty(self) -> bool:
        return not (self.ids if self.ids is not None else self.pairs)


def plan(net: netconfs.Network, valid: Valid, veths: list[attachments.Veth]) -> dict:
    """What a GC of this network removes, and the valid attachments to send it."""
    pool = pools.from_ipam(net.name, net.ipam) if net.ipam else None
    leases = attachments.leases(pool.data_dir, net.name) if pool else []
    mine = [v for v in veths if v.network == net.name]
    held = {(lease.container_id, lease.ifname) for lease in leases if lease.container_id and lease.ifname}
    held |= {(v.container_id, v.ifname) for v in mine}
    return {
        "network": net.name,
        "leases": [{"address": lease.address, "containerID": lease.container_id, "ifname": lease.ifname}
                   for lease in leases if lease.container_id and (lease.container_id, lease.ifname) not in valid],
        "veths": [{"name": v.name, "containerID": v.container_id, "ifname": v.ifname}
                  for v in mine if (v.container_id, v.ifname) not in valid],
        "keep": sorted(att for att in held if att in valid) if valid.ids is not None else sorted(valid.pairs or ()),
    }


def load_valid(args) -> Valid:
    if args.valid_from_cri:
        # every sandbox the runtime lists, ready or not: a stopped sandbox keeps its network until it is
        # removed (the runtime DELs it then); a sandbox ID is the CNI_CONTAINERID the runtime gave pycni
        from ..agent import cri

        path = args.valid_from_cri.removeprefix("unix://")
        return Valid(ids={sb.id for sb in cri.list_pod_sandboxes(path, timeout=30.0)},
                     source=f"CRI {args.valid_from_cri}")
    if args.valid_attachments:
        with open(args.valid_attachments, encoding="utf-8") as f:
            items = json.load(f)
        try:  # read as the plugin reads cni.dev/valid-attachments (docs/gc.md)
            pairs = attachment_list(items)
        except CNIError as err:
            raise ValueError(f"{args.valid_attachments}: {err.msg}") from None
        if items is None:  # a file saying null is a mistake, not "nothing is valid"
            raise ValueError(f"{args.valid_attachments}: expected a list of {{\"containerID\", \"ifname\"}}")
        return Valid(pairs=set(pairs), source=args.valid_attachments)
    return Valid(ids=set(args.valid_id), source="--valid-id")


def run_gc(net: netconfs.Network, keep: list[tuple[str, str]], args) -> tuple[int, str]:
    """The GC verb for one network: through the daemon if it answers, else here."""
    from .. import runner
    from ..daemon import client

    env = {"CNI_COMMAND": "GC", "CNI_PATH": args.cni_path, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if args.socket:
        env["PYCNI_SOCKET"] = args.socket
    stdin = json.dumps(net.gc_config(keep)).encode()
    answer = None if args.no_daemon else client.call("pycni", env, stdin)
    if answer is not None:
        status, text, _logs = answer
        return status, text
    return runner.run("pycni", env, stdin, stderr=sys.stderr)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pycni gc", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--valid-from-cri", metavar="SOCKET", help="valid sandboxes from this CRI socket "
                     "(e.g. /run/containerd/containerd.sock)")
    src.add_argument("--valid-attachments", metavar="FILE", help='JSON list of {"containerID", "ifname"}')
    src.add_argument("--valid-id", action="append", metavar="ID", help="a valid container ID (repeat)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--network", help="only this network")
    p.add_argument("--conf-dir", default=netconfs.DEFAULT_CONF_DIR)
    p.add_argument("--cni-path", default=os.environ.get("CNI_PATH", "/opt/cni/bin"),
                   help="CNI_PATH for the GC verb (delegated IPAM plugins; default $CNI_PATH or %(default)s)")
    p.add_argument("--socket", default="", help="the daemon's socket (default $PYCNI_SOCKET or /run/pycni/pycni.sock)")
    p.add_argument("--no-daemon", action="store_true", help="run the GC verb in this process")
    p.add_argument("--allow-empty", action="store_true", help="GC even if the valid list is empty")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        valid = load_valid(args)
    except Exception as exc:  # noqa: BLE001 - CRI unreachable, bad file: nothing was done
        print(f"pycni gc: cannot get the valid list: {exc}", file=sys.stderr)
        return 2
    found = netconfs.load(args.conf_dir)
    networks = [n for n in found.networks if not args.network or n.name == args.network]
    if args.network and not networks:
        print(f"pycni gc: no pycni network {args.network!r} in {args.conf_dir}", file=sys.stderr)
        return 2
    veths = attachments.veths()
    plans = [(net, plan(net, valid, veths)) for net in networks]
    doc: dict = {"dryRun": args.dry_run, "validFrom": valid.source, "networks": [], "problems": found.problems}
    if not args.dry_run and valid.empty() and any(pl["leases"] or pl["veths"] for _, pl in plans) \
            and not args.allow_empty:
        print(f"pycni gc: the valid list ({valid.source}) is empty: that would remove every attachment; "
              "refusing without --allow-empty", file=sys.stderr)
        return 2
    status = 0
    for net, pl in plans:
        entry = {"network": net.name, "leases": pl["leases"], "veths": pl["veths"]}
        if not args.dry_run:
            code, text = run_gc(net, pl["keep"], args)
            after = plan(net, valid, attachments.veths())
            gone_l = {x["address"] for x in after["leases"]}
            gone_v = {x["name"] for x in after["veths"]}
            entry["leases"] = [x for x in pl["leases"] if x["address"] not in gone_l]
            entry["veths"] = [x for x in pl["veths"] if x["name"] not in gone_v]
            entry["left"] = {"leases": after["leases"], "veths": after["veths"]}
            if code != 0:
                entry["error"] = json.loads(text) if text.startswith("{") else text
                status = 1
        doc["networks"].append(entry)
    if args.json:
        output.dump(doc)
        return status
    verb = "would remove" if args.dry_run else "removed"
    rows = [[e["network"], "lease", x["address"], x["containerID"], x["ifname"]] for e in doc["networks"]
            for x in e["leases"]]
    rows += [[e["network"], "veth", x["name"], x["containerID"], x["ifname"]] for e in doc["networks"]
             for x in e["veths"]]
    print(f"valid attachments from {valid.source}")
    if rows:
        output.table(["NETWORK", "KIND", "NAME", "CONTAINER", "IFNAME"], rows)
    for e in doc["networks"]:
        print(f"{e['network']}: {verb} {len(e['leases'])} lease(s), {len(e['veths'])} veth(s)")
        if "error" in e:
            print(f"{e['network']}: GC failed: {e['error']}")
    return status
