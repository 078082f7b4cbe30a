"""`pycni netpol`: the NetworkPolicy controller of one node (a container of its own in pycni's DaemonSet).

    pycni netpol --node-name N (--kube | --state-file F) [--once | --print] [--cleanup]

It watches pods, namespaces and NetworkPolicies (netpol_watch), compiles them for this node
(netpol_compile: pure) and loads the result as table `inet pycni-netpol` with one atomic `nft -f`
(nft.Table.replace). It waits for the first complete LIST of all three before loading anything, then
recompiles after every change (coalescing the changes of `--debounce` seconds) and loads only when
the text differs from what it loaded last. Every `--resync` seconds it also compares the kernel's
table with what it loaded and reloads on drift (someone flushed or edited it).

No packet ever goes to userspace: the kernel decides with the loaded table, and the controller only
rewrites it. When the controller stops (SIGTERM, an upgrade), the table stays: policies keep being
enforced, as last compiled, until the next controller replaces it. `--cleanup` deletes the table.

Each load logs the table's size and the time from the arrival of the oldest change it contains to
the end of `nft -f` ("enforced in"). `--once` loads once and prints a JSON status; `--print` prints
the nft script and loads nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from . import nft, sysctl
from .netpol_compile import FAMILY, TABLE, Compiled, compile_node
from .netpol_watch import RESOURCES, FileReflector, Reflector, Store
from .nodes import SA_DIR, KubeClient, NodeSourceError

log = logging.getLogger("pycni.netpol")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pycni netpol", description="NetworkPolicy for one node, compiled to nftables")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""), help="default: $NODE_NAME")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kube", action="store_true", help="watch the Kubernetes API (in-cluster service account)")
    src.add_argument("--state-file", help='JSON {"pods": [...], "namespaces": [...], "networkpolicies": [...]}')
    p.add_argument("--kube-sa-dir", default=SA_DIR)
    p.add_argument("--debounce", type=float, default=0.05, help="seconds of changes coalesced into one load")
    p.add_argument("--resync", type=float, default=60.0, help="seconds between drift checks (default 60)")
    p.add_argument("--sync-timeout", type=float, default=60.0, help="--once: seconds to wait for the lists")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="load once, print a JSON status, exit")
    mode.add_argument("--print", action="store_true", help="print the nft script, load nothing, exit")
    mode.add_argument("--cleanup", action="store_true", help=f"delete table {FAMILY} {TABLE}, exit")
    p.add_argument("--log-level", default=os.environ.get("PYCNI_AGENT_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if not args.cleanup:
        if not args.node_name:
            p.error("--node-name (or $NODE_NAME) is required")
        if not args.kube and not args.state_file:
            p.error("one of --kube or --state-file is required")
    return args


class Controller:
    def __init__(self, node: str, store: Store, table: nft.Table | None = None) -> None:
        self.node, self.store = node, store
        self.table = table or nft.Table(FAMILY, TABLE)
        self.body: str | None = None      # what we loaded last
        self.listing: str | None = None   # the kernel's table right after that load

    def compile(self) -> tuple[Compiled, float | None]:
        snap, since = self.store.snapshot()
        return compile_node(snap, self.node), since

    def sync(self, check_drift: bool = False) -> dict | None:
        """Compile; load if the text changed (or, with check_drift, if the kernel's table drifted).
        Returns a status when it loaded, None when there was nothing to do."""
        compiled, since = self.compile()
        drift = check_drift and self.body is not None and self.table.listing() != self.listing
        if compiled.body == self.body and not drift:
            return None
        t0 = time.monotonic()
        self.table.replace(compiled.body, f"pycni netpol: node {self.node} (generated; replaced as a whole)")
        done = time.monotonic()
        self.body, self.listing = compiled.body, self.table.listing()
        status = {"node": self.node, "rules": compiled.rules, "elements": compiled.elements,
                  "isolatedPods": compiled.isolated_pods, "policies": len(compiled.policies),
                  "loadSeconds": round(done - t0, 4), "drift": drift}
        if since is not None:
            status["enforcedSeconds"] = round(done - since, 4)
        return status


def _status_line(s: dict) -> str:
    lat = f", enforced {s['enforcedSeconds'] * 1000:.0f} ms after the change arrived" if "enforcedSeconds" in s else ""
    return (f"loaded table {FAMILY} {TABLE}: {s['rules']} rules, {s['elements']} set elements, "
            f"{s['isolatedPods']} isolated local pods, {s['policies']} policies (nft -f {s['loadSeconds'] * 1000:.0f} ms"
            f"{lat}){' - repaired drift' if s['drift'] else ''}")


def run(args: argparse.Namespace, store: Store, stop: threading.Event) -> int:
    if args.kube:
        client = KubeClient(sa_dir=args.kube_sa_dir)
        threads = [Reflector(client, kind, store, stop) for kind in RESOURCES]
        where = f"the API at {client.server}"
    else:
        threads = [FileReflector(args.state_file, store, stop)]
        where = args.state_file
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.sync_timeout
    while not store.synced and not stop.is_set():
        if (args.once or args.print) and time.monotonic() > deadline:
            print(json.dumps({"node": args.node_name, "errors": [f"no complete list from {where}"]}))
            return 1
        stop.wait(0.05)
    if stop.is_set():
        return 0
    missing = sysctl.bridge_netfilter()
    if missing:
        log.error("%s unavailable: traffic between pods of this node is NOT filtered (load br_netfilter)",
                  ", ".join(missing))
    ctl = Controller(args.node_name, store)
    if args.print:
        compiled, _ = ctl.compile()
        sys.stdout.write(ctl.table.script(compiled.body))
        return 0
    log.info("pycni netpol on node %s: watching %s", args.node_name, where)
    last_check = time.monotonic()
    while not stop.is_set():
        try:
            drift = time.monotonic() - last_check >= args.resync
            status = ctl.sync(check_drift=drift)
            if drift:
                last_check = time.monotonic()
            if status is not None:
                log.info("%s", _status_line(status))
            if args.once:
                out = status or {"node": args.node_name, "unchanged": True}
                out["errors"] = sorted(store.bad.values()) + [f"{m} unavailable" for m in missing]
                print(json.dumps(out, sort_keys=True))
                return 0
        except nft.NftError as exc:
            log.error("%s", exc)
            if args.once:
                print(json.dumps({"node": args.node_name, "errors": [str(exc)]}))
                return 1
            stop.wait(1)
        if store.changed.wait(max(0.0, args.resync - (time.monotonic() - last_check))):
            stop.wait(args.debounce)  # let a burst of events arrive: one load for all of them
    log.info("pycni netpol: stopping (table %s %s stays loaded)", FAMILY, TABLE)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s pycni-netpol %(levelname)s %(message)s")
    if args.cleanup:
        nft.Table(FAMILY, TABLE).delete()
        return 0
    if not nft.available():
        log.error("nft not found")
        return 2
    stop, store = threading.Event(), Store()

    def on_signal(signum, frame):
        log.info("signal %d", signum)
        stop.set()
        store.changed.set()  # wake the loop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(args, store, stop)
    except NodeSourceError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
