"""The agent's loop: `pycni agent --node-name X (--nodes-file F | --kube) ...` (or `python -m pycni.agent`).

Each round lists the nodes, then brings this node in line, in an order that never lets the runtime
use a half-prepared node:

1. the bundle into --cni-bin-dir (only when its digest differs from the installed one);
2. `net.ipv4.ip_forward` (and IPv6 forwarding with an IPv6 pod CIDR) on, and
   `net.bridge.bridge-nf-call-ip{,6}tables` where br_netfilter is loaded (Services on the same bridge);
3. routes to every other node's pod CIDR (routes.py, proto 156);
4. masquerading of cluster egress (masq.py);
5. --cni-conf-dir/10-pycni.conflist, last: its appearance is what makes the node's network ready;
6. with --cri-socket: leases of sandboxes the runtime no longer lists are released (stale.py).

Every step is idempotent and only acts on a difference, so a round with nothing to do costs a few
netlink dumps and one `nft list`. Between rounds the agent waits --interval seconds - with --kube on
a watch of the nodes, so a node joining or leaving is handled at once. SIGTERM/SIGINT end the wait
(or the round, after its current step) and the agent exits 0; it leaves routes, masquerading and the
conflist in place (pods keep working across an agent upgrade). `--cleanup` removes the routes and
the masquerade table instead and exits; the conflist and binaries stay unless `--cleanup-conflist`.

`--once` runs one round, prints a JSON status document on stdout and exits 0 if everything
succeeded, 1 otherwise.
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

from .. import logfmt, runstate
from ..bridge.config import DEFAULT_BRIDGE
from ..ipam.config import DEFAULT_DATA_DIR
from . import conflist, install, masq, routes, stale, sysctl
from .nodes import SA_DIR, FileSource, KubeClient, KubeSource, NodeList, NodeSourceError

log = logging.getLogger("pycni.agent")
BR_NETFILTER_MISSING = ("br_netfilter is not loaded in this node's kernel (no /proc/sys/net/bridge): a Service "
                        "whose backend is on the client's own node gets answers it cannot match; "
                        "load it on the host: modprobe br_netfilter")


class _Interrupted(BaseException):
    """Raised by the signal handler to break out of a blocking wait (an API watch)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pycni agent", description="pycni node agent: installs the plugin, "
                                "writes this node's conflist, routes pod CIDRs between nodes (host-gw), "
                                "masquerades cluster egress.")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""),
                   help="this node's name (default: $NODE_NAME)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--nodes-file", help='JSON list of {"name", "address", "podCIDRs"}')
    src.add_argument("--kube", action="store_true", help="read nodes from the Kubernetes API (in-cluster "
                     "service account)")
    p.add_argument("--kube-sa-dir", default=SA_DIR, help="service account dir (token, ca.crt; default %(default)s)")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--bundle-dir", default="", help="install the pycni bundle from here into --cni-bin-dir "
                   "(default: do not install)")
    p.add_argument("--cluster-cidr", action="append", default=[],
                   help="the cluster's pod range (repeat or comma-separate for dual-stack; default: $CLUSTER_CIDR)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (default 10)")
    p.add_argument("--once", action="store_true", help="one round, a JSON status on stdout, exit")
    p.add_argument("--cleanup", action="store_true", help="remove our routes and masquerade table, exit")
    p.add_argument("--cleanup-conflist", action="store_true", help="with --cleanup: also remove the conflist")
    p.add_argument("--masq-backend", choices=["auto", "nftables", "iptables", "none"], default="auto")
    p.add_argument("--cni-version", default=conflist.DEFAULT_CNI_VERSION)
    p.add_argument("--network-name", default=conflist.NETWORK_NAME)
    p.add_argument("--bridge", default=DEFAULT_BRIDGE)
    p.add_argument("--ipam-data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--mtu", type=int, default=0)
    p.add_argument("--plugin-log-file", default="", help="logFile for the bridge plugin in the conflist")
    p.add_argument("--log-level", default=os.environ.get("PYCNI_AGENT_LOG_LEVEL", "INFO"))
    p.add_argument("--cri-socket", default=os.environ.get("CRI_SOCKET", ""),
                   help="the runtime's CRI socket: release leases of sandboxes it no longer has (stale.py; "
                   "default $CRI_SOCKET, off when empty)")
    p.add_argument("--stale-lease-grace", type=float, default=120.0,
                   help="seconds a lease must exist before it can count as stale (default 120)")
    p.add_argument("--ready-file", default="", help="exists exactly while the last round succeeded (a "
                   "readiness probe tests it); removed on errors and on exit")
    p.add_argument("--state-file", default=runstate.DEFAULT_AGENT_STATE,
                   help="where `pycni status` and the daemon's metrics read the last round (default %(default)s; "
                   "empty: none)")
    logfmt.add_argument(p)
    args = p.parse_args(argv)
    cidrs = args.cluster_cidr or [os.environ.get("CLUSTER_CIDR", "")]
    args.cluster_cidr = [c.strip() for item in cidrs for c in item.split(",") if c.strip()]
    if not args.cleanup:
        if not args.node_name:
            p.error("--node-name (or $NODE_NAME) is required")
        if not args.nodes_file and not args.kube:
            p.error("one of --nodes-file or --kube is required")
        if not args.cluster_cidr and args.masq_backend != "none":
            p.error("--cluster-cidr (or $CLUSTER_CIDR) is required unless --masq-backend none")
    return args


def _mark_ready(path: str, ready: bool) -> None:
    """The readiness file: present while this node is fully prepared (bundle installed, routes, masquerade,
    conflist written), absent otherwise."""
    if not path:
        return
    try:
        if ready:
            with open(path, "w") as f:
                f.write(f"{time.time():.0f}\n")
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("ready file %s: %s", path, exc)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.masq = masq.backend(args.masq_backend) if not args.cleanup else None
        self.bundle_digest: str | None = None
        self.last_version = ""
        self.said_br_netfilter = False
        self.state = runstate.AgentState(args.state_file) if args.state_file and not args.cleanup else None
        self.last_plan: routes.Plan | None = None
        if args.kube:
            self.source = KubeSource(KubeClient(sa_dir=args.kube_sa_dir))
        elif args.nodes_file:
            self.source = FileSource(args.nodes_file)
        else:
            self.source = None

    # -- one round -----------------------------------------------------------------------------------

    def round(self, nodes: NodeList) -> dict:
        a = self.args
        self.last_plan = None
        status: dict = {"node": a.node_name, "errors": list(nodes.errors), "changes": []}
        if a.bundle_dir:
            try:
                if self.bundle_digest is None:
                    install.check_bundle(a.bundle_dir)
                    self.bundle_digest = install.digest(a.bundle_dir)
                if install.install(a.bundle_dir, a.cni_bin_dir, self.bundle_digest):
                    status["changes"].append(f"installed bundle into {a.cni_bin_dir}")
            except (install.InstallError, OSError) as exc:
                status["errors"].append(f"install: {exc}")
        me = nodes.get(a.node_name)
        pod_cidrs = list(me.pod_cidrs) if me else []
        status["podCIDRs"] = pod_cidrs
        if me is None:
            status["errors"].append(f"node {a.node_name!r} is not in the node list ({self.source.describe()})")
        elif not pod_cidrs:
            status["errors"].append(f"node {a.node_name!r} has no pod CIDR yet")
        versions = {4 if ":" not in c else 6 for c in pod_cidrs}
        if 4 in versions or not versions:
            sysctl.forwarding(4)
        if 6 in versions:
            sysctl.forwarding(6)
        # kube-proxy (iptables/nftables) must see bridged pod-to-pod traffic, or a Service whose backend is on
        # the client's own bridge answers with the backend's address (un-DNATed). Only when br_netfilter is loaded.
        # Without br_netfilter (a module of the node's kernel: a pod cannot load it) that case is broken: said
        # once in the log and in every status, not an error (everything else works).
        if not os.path.exists("/proc/sys/net/bridge"):
            status["warnings"] = [BR_NETFILTER_MISSING]
            if not self.said_br_netfilter:
                log.warning("%s", BR_NETFILTER_MISSING)
                self.said_br_netfilter = True
        else:
            sysctl.bridge_netfilter()

        want = routes.desired(nodes.nodes, a.node_name)
        status["errors"] += want.problems
        try:
            self.last_plan, applied = routes.reconcile(want.routes)
            status["changes"] += applied.done
            status["errors"] += applied.errors
        except Exception as exc:  # noqa: BLE001 - netlink trouble: report, keep the loop alive
            status["errors"].append(f"routes: {type(exc).__name__}: {exc}")
        status["routes"] = want.routes

        if pod_cidrs and self.masq is not None:
            try:
                if self.masq.ensure(masq.MasqSpec(tuple(pod_cidrs), tuple(a.cluster_cidr))):
                    status["changes"].append(f"masquerade ({self.masq.name}) applied")
            except masq.MasqError as exc:
                status["errors"].append(f"masquerade: {exc}")
            status["masq"] = self.masq.name

        if pod_cidrs:
            path = os.path.join(a.cni_conf_dir, conflist.CONFLIST_NAME)
            try:
                conf = conflist.render(pod_cidrs, network=a.network_name, bridge=a.bridge,
                                       data_dir=a.ipam_data_dir, cni_version=a.cni_version, mtu=a.mtu,
                                       log_file=a.plugin_log_file)
                if conflist.write_atomic(path, conflist.dumps(conf)):
                    status["changes"].append(f"wrote {path}")
                if a.cri_socket:
                    swept = stale.reconcile(conf, a.cri_socket, a.cni_bin_dir, a.stale_lease_grace)
                    status["changes"] += swept.released
                    status["errors"] += swept.errors
            except (OSError, ValueError) as exc:
                status["errors"].append(f"conflist: {exc}")
            status["conflist"] = path
        return status

    # -- the loop --------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, waiting: list[bool]) -> int:
        a = self.args
        log.info("pycni agent on node %s: nodes from %s, every %gs", a.node_name, self.source.describe(), a.interval)
        ok = True
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                nodes = self.source.list()
            except NodeSourceError as exc:
                log.error("listing nodes: %s", exc)
                if a.once:
                    print(json.dumps({"node": a.node_name, "errors": [str(exc)], "changes": []}))
                    return 1
                self._wait(stop, waiting, "", min(a.interval, 5))
                continue
            status = self.round(nodes)
            status["seconds"] = round(time.monotonic() - t0, 3)
            if self.state is not None:
                self.state.record(status, self.last_plan)
            ok = not status["errors"]
            for change in status["changes"]:
                log.info("%s", change)
            for err in status["errors"]:
                log.warning("%s", err)
            if a.once:
                print(json.dumps(status, sort_keys=True))
                return 0 if ok else 1
            _mark_ready(a.ready_file, ok)
            self.last_version = nodes.version
            self._wait(stop, waiting, nodes.version, a.interval)
            # a watch that returns at once (a burst of node updates, an error event) must not spin
            pause = min(1.0, a.interval) - (time.monotonic() - t0)
            if pause > 0:
                stop.wait(pause)
        log.info("pycni agent: stopping")
        _mark_ready(a.ready_file, False)
        return 0

    def _wait(self, stop: threading.Event, waiting: list[bool], version: str, timeout: float) -> None:
        if stop.is_set():
            return
        waiting[0] = True
        try:
            self.source.wait(version, timeout, stop)
        except _Interrupted:
            pass
        finally:
            waiting[0] = False


def cleanup(args: argparse.Namespace) -> int:
    errors = routes.remove_all().errors
    for backend in (masq.NftBackend(), masq.IptablesBackend()):
        if backend.available():
            try:
                backend.remove()
            except masq.MasqError as exc:
                errors.append(str(exc))
    if args.cleanup_conflist:
        try:
            os.unlink(os.path.join(args.cni_conf_dir, conflist.CONFLIST_NAME))
        except FileNotFoundError:
            pass
    for err in errors:
        log.warning("%s", err)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logfmt.basic_config(args.log_level, args.log_format, "%(asctime)s pycni-agent %(levelname)s %(message)s")
    if args.cleanup:
        return cleanup(args)
    stop = threading.Event()
    waiting = [False]

    def on_signal(signum, frame):
        log.info("signal %d", signum)
        stop.set()
        if waiting[0]:
            raise _Interrupted()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(args)
    except (NodeSourceError, masq.MasqError) as exc:
        log.error("%s", exc)
        return 2
    try:
        return agent.run(stop, waiting)
    except _Interrupted:
        _mark_ready(args.ready_file, False)
        return 0
