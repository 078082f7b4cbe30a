"""The daemon's Prometheus metrics (`pycni daemon --metrics-address HOST:PORT`), through
prometheus-client. Off unless an address is given ($PYCNI_METRICS_ADDRESS); the kind DaemonSet
serves them on :9472 (README "Operating pycni"). Only the daemon imports this module: the exec'd
plugin never pays for prometheus-client.

  pycni_requests_total{plugin,verb,code}           requests the daemon served; code 0 = success,
                                                    else the CNI error code of the answer
  pycni_request_duration_seconds{plugin,verb}      histogram of the whole verb, in the daemon
  pycni_requests_in_flight                         requests being served now
  pycni_standalone_requests_total{plugin,verb,reason}
                                                    requests the exec'd plugin served itself:
                                                    reason absent (no daemon answered), refused (the
                                                    daemon declined: version, namespace, stopping),
                                                    shim (the native shim fell back) - counted from
                                                    the spool the plugin appends to (daemon/spool.py),
                                                    taken in when the daemon starts and at each scrape
  pycni_ipam_leases{network,range,subnet}          leases held in each host-local range
  pycni_ipam_capacity{network,range,subnet}        addresses the range can hand out
                                                    (pools: the conf dir's pycni networks plus every
                                                    network a request named; leases counted at scrape)
  pycni_gc_runs_total{network,result}              GC verbs served (result ok / error)
  pycni_gc_removed_total{network,kind}             what they removed: kind lease | link
  pycni_agent_reconcile_runs_total, pycni_agent_reconcile_failed_runs_total,
  pycni_agent_routes_{added,removed,replaced}_total, pycni_agent_last_reconcile_timestamp_seconds,
  pycni_agent_last_reconcile_duration_seconds      the node agent's rounds, from its state file
                                                    (runstate.AgentState)
  pycni_daemon_info{version}, pycni_daemon_start_time_seconds, pycni_daemon_workers

GC removals are measured around the verb: the lease files and pycni veths of attachments outside
`cni.dev/valid-attachments` before, minus those still there after. Requests that ran standalone
(`pycni gc` without a daemon) are not in the gc counters, only in the standalone counter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__, runstate
from .daemon import spool
from .inspect import attachments, netconfs, pools
from .spec.errors import CNIError
from .spec.gc import valid_attachments

log = logging.getLogger("pycnid.metrics")
ENV = "PYCNI_METRICS_ADDRESS"
KUBERNETES_PORT = 9472  # the DaemonSet's --metrics-address (integration/kind/pycni-daemonset.yaml)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_LEARNED_POOLS = 256


def parse_address(value: str) -> tuple[str, int]:
    """"HOST:PORT", "[V6]:PORT" or ":PORT" (all addresses) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address {value!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class Metrics:
    def __init__(self, socket_path: str, conf_dir: str = netconfs.DEFAULT_CONF_DIR,
                 agent_state: str = runstate.DEFAULT_AGENT_STATE, workers: int = 0) -> None:
        self.socket_path = socket_path
        self.conf_dir = conf_dir
        self.agent_state = agent_state
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pycni_requests", "CNI requests served by the daemon, by result code (0 = success)",
                                ["plugin", "verb", "code"], registry=r)
        self.duration = Histogram("pycni_request_duration_seconds", "Time to serve a CNI request in the daemon",
                                  ["plugin", "verb"], buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("pycni_requests_in_flight", "CNI requests being served", registry=r)
        self.standalone = Counter("pycni_standalone_requests", "CNI requests the exec'd plugin served itself "
                                  "(daemon absent or refused), from the standalone spool",
                                  ["plugin", "verb", "reason"], registry=None)  # _Collected: after the spool
        self.gc_runs = Counter("pycni_gc_runs", "GC verbs served by the daemon", ["network", "result"], registry=r)
        self.gc_removed = Counter("pycni_gc_removed", "What GC verbs removed (lease files, host veths)",
                                  ["network", "kind"], registry=r)
        Info("pycni_daemon", "The pycni daemon", registry=r).info({"version": __version__})
        Gauge("pycni_daemon_start_time_seconds", "When the daemon started (unix time)",
              registry=r).set(time.time())
        Gauge("pycni_daemon_workers", "Requests the daemon serves at the same time", registry=r).set(workers)
        self._pools: dict[tuple[str, str], pools.Pool] = {}
        self._seen: dict[str, str] = {}  # network -> its ipam section, as last seen
        self._lock = threading.Lock()
        r.register(_Collected(self))
        self.take_spool()
        self.server = None
        self.address = ""

    # -- the request hook (daemon/server.py) ---------------------------------------------------------

    def begin(self, plugin: str, env: dict[str, str], stdin: bytes) -> dict:
        probe = {"plugin": plugin, "verb": env.get("CNI_COMMAND", ""), "t0": time.monotonic()}
        self.in_flight.inc()
        try:
            conf = json.loads(stdin)
            if isinstance(conf, dict):
                self._learn(plugin, conf)
                if probe["verb"] == "GC":
                    probe["gc"] = _GcProbe(plugin, conf)
        except Exception as exc:  # noqa: BLE001 - a bad request is the verb's business, not the metrics'
            log.debug("metrics: %s", exc)
        return probe

    def end(self, probe: dict, status: int, stdout: str) -> None:
        self.in_flight.dec()
        plugin, verb = probe["plugin"], probe["verb"] or "-"
        code = 0 if status == 0 else _error_code(stdout)
        self.requests.labels(plugin, verb, str(code)).inc()
        self.duration.labels(plugin, verb).observe(time.monotonic() - probe["t0"])
        gc = probe.get("gc")
        if gc is not None and gc.network:
            self.gc_runs.labels(gc.network, "ok" if status == 0 else "error").inc()
            try:
                leases, links = gc.removed()
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: cannot measure what GC removed: %s", exc)
                return
            self.gc_removed.labels(gc.network, "lease").inc(leases)
            self.gc_removed.labels(gc.network, "link").inc(links)

    # -- pools ---------------------------------------------------------------------------------------

    def _learn(self, plugin: str, conf: dict) -> None:
        """Remember the pool of a network a request names (its `ipam` section), re-parsed only when
        that section changes."""
        name, ipam = conf.get("name"), conf.get("ipam")
        if not isinstance(name, str) or not isinstance(ipam, dict):
            return
        if plugin == "pycni" and ipam.get("type") not in netconfs.HOST_LOCAL_TYPES:
            return
        text = json.dumps(ipam, sort_keys=True, default=str)
        with self._lock:
            if self._seen.get(name) == text or (name not in self._seen and len(self._seen) >= MAX_LEARNED_POOLS):
                return
        pool = pools.from_ipam(name, ipam)
        with self._lock:
            self._seen[name] = text
            if pool is not None:
                self._pools[(pool.data_dir, name)] = pool

    def all_pools(self) -> list[pools.Pool]:
        found = {}
        for net in netconfs.load(self.conf_dir).networks:
            pool = pools.from_ipam(net.name, net.ipam) if net.ipam else None
            if pool is not None:
                found[(pool.data_dir, pool.network)] = pool
        with self._lock:
            for key, pool in self._pools.items():
                found.setdefault(key, pool)
        return sorted(found.values(), key=lambda p: (p.network, p.data_dir))

    def take_spool(self) -> None:
        for plugin, verb, reason in spool.drain(self.socket_path):
            self.standalone.labels(plugin, verb, reason).inc()

    # -- serving -------------------------------------------------------------------------------------

    def serve(self, address: str) -> str:
        from prometheus_client import start_http_server

        host, port = parse_address(address)
        self.server, _thread = start_http_server(port, host, registry=self.registry)
        bound = self.server.server_address
        return f"{bound[0]}:{bound[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _error_code(stdout: str) -> int:
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        return -1
    return code if isinstance(code, int) else -1


class _GcProbe:
    """Lease files and pycni veths of the attachments a GC is about to remove (not in the valid list)."""

    def __init__(self, plugin: str, conf: dict) -> None:
        self.network = conf.get("name") if isinstance(conf.get("name"), str) else ""
        try:
            self.valid: frozenset | None = valid_attachments(conf)  # the plugin's own reading (docs/gc.md)
        except CNIError:
            self.valid = None  # the plugin refuses the request: it removes nothing
        ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
        self.pool = pools.from_ipam(self.network, ipam) if self.network else None
        self.with_links = plugin == "pycni"
        self.leases = self._stale_leases()
        self.links = self._stale_links()

    def _stale_leases(self) -> set[str]:
        if self.pool is None or self.valid is None:
            return set()
        return {lease.address for lease in attachments.leases(self.pool.data_dir, self.network)
                if lease.container_id is not None and (lease.container_id, lease.ifname) not in self.valid}

    def _stale_links(self) -> set[str]:
        if not self.with_links or self.valid is None:
            return set()
        return {v.name for v in attachments.veths()
                if v.network == self.network and (v.container_id, v.ifname) not in self.valid}

    def removed(self) -> tuple[int, int]:
        leases_after = {str(ip) for ip in pools.leased_addresses(self.pool.path)} if self.pool else set()
        links_after = self._stale_links() if self.links else set()
        return len(self.leases - leases_after), len(self.links - links_after)


class _Collected:
    """What is read at scrape time: the spool, the pools' leases, the agent's state file."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        self.m.take_spool()
        yield from self.m.standalone.collect()
        leases = GaugeMetricFamily("pycni_ipam_leases", "Leases held in a host-local range",
                                   labels=["network", "range", "subnet"])
        cap = GaugeMetricFamily("pycni_ipam_capacity", "Addresses a host-local range can hand out",
                                labels=["network", "range", "subnet"])
        for pool in self.m.all_pools():
            for use in pools.usage(pool):
                leases.add_metric([pool.network, use.range, use.subnet], use.leased)
                cap.add_metric([pool.network, use.range, use.subnet], use.capacity)
        yield leases
        yield cap
        state = runstate.read(self.m.agent_state)
        if not state:
            return
        totals = state.get("totals") if isinstance(state.get("totals"), dict) else {}
        for name, key, text in (
                ("pycni_agent_reconcile_runs", "rounds", "Node agent reconcile rounds"),
                ("pycni_agent_reconcile_failed_runs", "failedRounds", "Node agent rounds that reported errors"),
                ("pycni_agent_routes_added", "routesAdded", "Routes to other nodes' pod CIDRs the agent added"),
                ("pycni_agent_routes_removed", "routesRemoved", "Stale pod CIDR routes the agent removed"),
                ("pycni_agent_routes_replaced", "routesReplaced", "Pod CIDR routes the agent corrected")):
            yield CounterMetricFamily(name, text, value=float(totals.get(key, 0) or 0))
        last = state.get("lastRound") if isinstance(state.get("lastRound"), dict) else {}
        if isinstance(last.get("time"), (int, float)):
            yield GaugeMetricFamily("pycni_agent_last_reconcile_timestamp_seconds",
                                    "When the agent's last round ended (unix time)", value=last["time"])
        if isinstance(last.get("seconds"), (int, float)):
            yield GaugeMetricFamily("pycni_agent_last_reconcile_duration_seconds",
                                    "How long the agent's last round took", value=last["seconds"])


# -- the daemon's options and start (daemon/server.py calls these) --------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--metrics-address", default=os.environ.get(ENV, ""),
                        help=f"serve Prometheus metrics on HOST:PORT (default ${ENV}; empty: off; "
                        f"the kind DaemonSet uses :{KUBERNETES_PORT})")
    parser.add_argument("--cni-conf-dir", default=netconfs.DEFAULT_CONF_DIR,
                        help="the pycni networks whose pools the metrics report (default %(default)s)")
    parser.add_argument("--agent-state", default=runstate.DEFAULT_AGENT_STATE,
                        help="the node agent's state file, for its reconcile metrics (default %(default)s)")


def start(args, socket_path: str, workers: int) -> Metrics | None:
    if not args.metrics_address:
        return None
    m = Metrics(socket_path, args.cni_conf_dir, args.agent_state, workers)
    bound = m.serve(args.metrics_address)
    log.info("metrics on http://%s/metrics", bound)
    m.address = bound
    return m
