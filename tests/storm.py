"""A storm of random ADD / DEL / CHECK / GC operations on one network from several workers, with
invariant checks after every step (used by tests/test_concurrency.py and integration/stress.py).

Every worker thread owns a few attachment slots: bridge slots (a pod namespace each, the pycni
bridge) and lease-only slots (host-local alone, ifname net1). Each operation takes a route:

  worker      pycni.runner.run in a long-lived process in the node namespace (the daemon's code path),
              in-process host-local                                                   spec 1.1.0
  exec        the `pycni` executable, in-process host-local                          spec 1.1.0
  ref-ipam    `pycni` (worker or exec) delegating to the reference /usr/lib/cni/host-local  1.0.0
  hl, hl-exec lease-only slots: pycni-host-local in a worker or exec'd
  ref-hl      lease-only slots: the reference `host-local` exec'd

so the reference and pycni, exec'd and in-process, race on the same store and lock.

Invariants:
  * after every step, for its own slot: an ADD's lease file names the attachment and the pod has
    exactly that address; after a DEL no lease names it and the pod has no interface left; a CHECK
    of a live attachment succeeds; every ADD returns an address no live attachment holds
    (duplicates, checked across all workers);
  * after every GC and every `full_every` steps, with all workers paused: the leases are exactly the
    live attachments, no temporary file, the node's links are the baseline plus one veth per live
    bridge attachment, the masquerade sets hold exactly the live bridge addresses, every live
    bridge address answers a ping from the node;
  * at the end, after DEL of everything: the store, links and firewall are the baseline.

With `kill_rate` > 0 an operation is SIGKILLed after a random delay (exec'd plugins and workers
alike); the slot is then recovered with a DEL - as a runtime does after a failed ADD - or, for a
GC, with another GC.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import reliability as rel

SUBNET = "10.66.0.0/24"
IN_PROCESS = ("worker", "ref-ipam", "hl")  # routes run by a Worker (pycni.runner.run in-process)
NET = "storm"


class RWLock:
    """Many operations at once, or one GC (and full check) alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._writer = True
            while self._readers:
                self._cond.wait()

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


@dataclass
class Slot:
    kind: str  # "bridge" or "hl"
    pod: str
    ifname: str
    cid: str | None = None
    ip: str | None = None
    result: dict | None = None


@dataclass
class Stats:
    ops: collections.Counter = field(default_factory=collections.Counter)
    routes: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)  # code -> count
    kills: int = 0
    leaks: int = 0
    duplicates: int = 0
    full_checks: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class Storm:
    def __init__(self, lab: rel.Lab, *, workers: int = 8, bridge_slots: int = 2, hl_slots: int = 1,
                 exec_rate: float = 0.1, ref_rate: float = 0.15, gc_rate: float = 0.03, kill_rate: float = 0.0,
                 full_every: int = 100, seed: int | None = None, reference_dir: Path = rel.REFERENCE_DIR) -> None:
        self.lab = lab
        # the reference host-local racing pycni on the store (routes ref-hl, ref-ipam): either release
        self.reference_dir = reference_dir
        self.cni_path = f"{rel.VENV_BIN}:{reference_dir}"
        self.node = lab.netns("node")
        self.data = lab.tmp / "storm-ipam"
        self.net_dir = self.data / NET
        self.conf = rel.bridge_conf(self.data, name=NET, subnet=SUBNET, ipMasq=True, ipMasqBackend="nftables")
        self.ref_conf = rel.bridge_conf(self.data, name=NET, subnet=SUBNET, ipMasq=True, ipMasqBackend="nftables",
                                        ipam_type="host-local", version="1.0.0")
        self.hl_conf = rel.hl_conf(self.data, name=NET, subnet=SUBNET)
        self.ref_hl_conf = rel.hl_conf(self.data, name=NET, subnet=SUBNET, version="1.0.0", plugin="host-local")
        self.exec_rate, self.ref_rate, self.gc_rate, self.kill_rate = exec_rate, ref_rate, gc_rate, kill_rate
        self.full_every = full_every
        self.random = rel.rng(seed)
        self.stats = Stats()
        self.lock = RWLock()
        self.mutex = threading.Lock()
        self.holders: dict[str, tuple[str, str]] = {}  # live address -> attachment
        self.steps = 0
        self.slots: list[list[Slot]] = []
        for _ in range(workers):
            mine = [Slot("bridge", lab.netns("pod"), "eth0") for _ in range(bridge_slots)]
            mine += [Slot("hl", lab.netns("pod"), "net1") for _ in range(hl_slots)]
            self.slots.append(mine)
        self.workers = [rel.Worker(lab, self.node) for _ in range(workers)]
        # the baseline: bridge and gateway address exist (they stay by design), nothing else
        warm = Slot("bridge", self.slots[0][0].pod, "eth0")
        cid = rel.new_cid("warm")
        self._call(0, "ADD", warm, cid, "worker", expect_ok=True)
        self._call(0, "DEL", warm, cid, "worker", expect_ok=True)
        self.baseline = self.state()

    # -- plumbing ------------------------------------------------------------------------------------

    def _route(self, r, slot: Slot) -> str:
        if slot.kind == "hl":
            x = r.random()
            return "ref-hl" if x < 0.4 else "hl-exec" if x < 0.4 + self.exec_rate else "hl"
        x = r.random()
        if x < self.ref_rate:
            return "ref-ipam-exec" if r.random() < self.exec_rate else "ref-ipam"
        return "exec" if x < self.ref_rate + self.exec_rate else "worker"

    def _call(self, w: int, command: str, slot: Slot | None, cid: str | None, route: str, *,
              conf_extra: dict | None = None, netns: str | None = "", kill_after: float | None = None,
              expect_ok: bool = False) -> rel.Outcome:
        if route in ("ref-ipam", "ref-ipam-exec"):
            conf, plugin = self.ref_conf, "pycni"
        elif route in ("hl", "hl-exec"):
            conf, plugin = self.hl_conf, "pycni-host-local"
        elif route == "ref-hl":
            conf, plugin = self.ref_hl_conf, str(self.reference_dir / "host-local")
        else:
            conf, plugin = self.conf, "pycni"
        conf = dict(conf, **(conf_extra or {}))
        if netns == "":
            netns = rel.ns_path(slot.pod) if slot else None
        env = rel.plugin_env(command, cid, netns, slot.ifname if slot else None, path=self.cni_path)
        if route in IN_PROCESS:
            res = self.workers[w].call(plugin, env, conf, kill_after=kill_after)
        else:
            res = rel.finish(rel.start(plugin, env, self.node), conf, kill_after)
        if expect_ok and res.returncode != 0:
            raise AssertionError(f"{command} via {route} failed: {res.stdout} {res.stderr[-500:]}")
        return res

    def _problem(self, text: str) -> None:
        with self.mutex:
            self.stats.problems.append(text)

    def _error(self, res: rel.Outcome, what: str) -> None:
        with self.mutex:
            self.stats.errors[res.code] += 1
            self.stats.problems.append(f"{what}: {res.stdout.strip()[:300]} {res.stderr.strip()[-300:]}")

    def _kill_delay(self, r, route: str) -> float | None:
        if not self.kill_rate or r.random() >= self.kill_rate:
            return None
        if route in IN_PROCESS:
            return r.uniform(0, 0.05)  # in-process: an operation takes milliseconds
        return r.uniform(0, 0.3)

    # -- operations -----------------------------------------------------------------------------------

    def step(self, w: int, r) -> None:
        if r.random() < self.gc_rate:
            return self.gc(w, r)
        slot = r.choice(self.slots[w])
        if slot.cid is None:
            op = "ADD" if r.random() < 0.9 else "DEL"
        else:
            op = "CHECK" if r.random() < 0.3 else "DEL"
        self.lock.acquire_read()
        try:
            {"ADD": self.add, "DEL": self.delete, "CHECK": self.check}[op](w, r, slot)
        finally:
            self.lock.release_read()
        self._tick()

    def _tick(self) -> None:
        with self.mutex:
            self.steps += 1
            due = self.full_every and self.steps % self.full_every == 0
        if due:
            self.lock.acquire_write()
            try:
                self.full_check()
            finally:
                self.lock.release_write()

    def add(self, w: int, r, slot: Slot) -> None:
        route = self._route(r, slot)
        cid = rel.new_cid("s")
        delay = self._kill_delay(r, route)
        res = self._call(w, "ADD", slot, cid, route, kill_after=delay)
        self._count("ADD", route)
        if res.killed:
            self._recover(w, slot, cid)
            return
        if res.returncode != 0:
            self._error(res, f"ADD via {route}")
            self._call(w, "DEL", slot, cid, route)  # as a runtime does after a failed ADD
            return
        result = res.json
        ip = result["ips"][0]["address"].split("/")[0]
        with self.mutex:
            if ip in self.holders:
                self.stats.duplicates += 1
                self.stats.problems.append(f"{ip} handed to {cid} while held by {self.holders[ip]}")
            self.holders[ip] = (cid, slot.ifname)
        slot.cid, slot.ip, slot.result = cid, ip, result
        lease = self._lease_of(ip)
        if lease != (cid, slot.ifname):
            self._problem(f"after ADD {cid}: lease {ip} is {lease}")
        if slot.kind == "bridge" and rel.pod_addresses(slot.pod) != [ip]:
            self._problem(f"after ADD {cid}: pod has {rel.pod_addresses(slot.pod)}, result says {ip}")

    def delete(self, w: int, r, slot: Slot) -> None:
        route = self._route(r, slot)
        cid = slot.cid or rel.new_cid("stray")  # a DEL of something never added must succeed too
        with self.mutex:
            if slot.ip is not None:
                self.holders.pop(slot.ip, None)
        netns = None if slot.kind == "bridge" and r.random() < 0.2 else ""  # containerd's second DEL
        delay = self._kill_delay(r, route)
        res = self._call(w, "DEL", slot, cid, route, netns=netns, kill_after=delay)
        self._count("DEL", route)
        if res.killed:
            self._recover(w, slot, cid)
        elif res.returncode != 0:
            self._error(res, f"DEL via {route}")
            self._recover(w, slot, cid)
        slot.cid = slot.ip = slot.result = None
        self._check_gone(cid, slot)

    def check(self, w: int, r, slot: Slot) -> None:
        route = self._route(r, slot)
        delay = self._kill_delay(r, route)
        res = self._call(w, "CHECK", slot, slot.cid, route, conf_extra={"prevResult": slot.result},
                         kill_after=delay)
        self._count("CHECK", route)
        if res.killed:
            with self.mutex:
                self.stats.kills += 1
        elif res.returncode != 0 or res.stdout.strip():
            self._error(res, f"CHECK via {route}")

    def gc(self, w: int, r) -> None:
        self.lock.acquire_write()
        try:
            valid = [(s.cid, s.ifname) for mine in self.slots for s in mine if s.cid]
            route = "worker" if r.random() >= self.exec_rate else "exec"
            gc = rel.gc_conf(self.conf, valid)
            res = self._call(w, "GC", None, None, route, conf_extra=gc, kill_after=self._kill_delay(r, route))
            self._count("GC", route)
            if res.killed:
                self.stats.kills += 1
                res = self._call(w, "GC", None, None, "exec", conf_extra=gc)
            if res.returncode != 0 or res.stdout.strip():
                self._error(res, "GC")
            self.full_check()
        finally:
            self.lock.release_write()

    def _recover(self, w: int, slot: Slot, cid: str) -> None:
        with self.mutex:
            self.stats.kills += 1
        res = self._call(w, "DEL", slot, cid, "worker" if slot.kind == "bridge" else "hl")
        if res.returncode != 0:
            self._error(res, "recovery DEL")
        slot.cid = slot.ip = slot.result = None
        self._check_gone(cid, slot)

    def _count(self, op: str, route: str) -> None:
        with self.mutex:
            self.stats.ops[op] += 1
            self.stats.routes[route] += 1

    # -- invariants -----------------------------------------------------------------------------------

    def _lease_of(self, ip: str) -> tuple[str, str] | None:
        try:
            cid, _, ifname = (self.net_dir / ip).read_bytes().decode().partition("\r\n")
        except OSError:
            return None
        return cid.strip(), ifname.strip()

    def _check_gone(self, cid: str, slot: Slot) -> None:
        left = [ip for ip, (c, _) in rel.leases(self.net_dir).items() if c == cid]
        if left:
            with self.mutex:
                self.stats.leaks += len(left)
                self.stats.problems.append(f"after DEL of {cid}: leases {left} left")
        if slot.kind == "bridge" and rel.pod_link_names(slot.pod) != ["lo"]:
            with self.mutex:
                self.stats.leaks += 1
                self.stats.problems.append(f"after DEL of {cid}: pod still has {rel.pod_link_names(slot.pod)}")

    def live(self) -> list[Slot]:
        return [s for mine in self.slots for s in mine if s.cid]

    def state(self) -> dict:
        return {"store": rel.store_state(self.net_dir), "links": rel.node_links(self.node),
                "firewall": rel.firewall(self.node)}

    def full_check(self) -> None:
        """All workers paused: the node holds exactly the live attachments."""
        self.stats.full_checks += 1
        live = self.live()
        want = {s.ip: (s.cid, s.ifname) for s in live}
        have = rel.leases(self.net_dir)
        extra = {ip: o for ip, o in have.items() if want.get(ip) != o}
        missing = {ip: o for ip, o in want.items() if have.get(ip) != o}
        if extra:
            self.stats.leaks += len(extra)
            self.stats.problems.append(f"leases nobody holds: {extra}")
        if missing:
            self.stats.problems.append(f"live attachments without their lease: {missing}")
        owners = collections.Counter(o for o in have.values())
        dup = {o: n for o, n in owners.items() if n > 1 and o in want.values()}
        if dup:
            self.stats.duplicates += len(dup)
            self.stats.problems.append(f"attachments holding two leases: {dup}")
        if rel.tmp_files(self.net_dir):
            self.stats.leaks += 1
            self.stats.problems.append(f"temporary files: {rel.tmp_files(self.net_dir)}")
        links = rel.node_links(self.node)
        veths = {n for n in links if n not in self.baseline["links"]}
        from pycni.bridge.verbs import host_veth_name

        want_veths = {host_veth_name(s.cid, s.ifname) for s in live if s.kind == "bridge"}
        if veths != want_veths:
            self.stats.leaks += len(veths - want_veths)
            self.stats.problems.append(f"veths {sorted(veths)} != live {sorted(want_veths)}")
        masq = self._masquerade_addresses()
        want_masq = {s.ip for s in live if s.kind == "bridge"}
        if masq != want_masq:
            self.stats.leaks += len(masq - want_masq)
            self.stats.problems.append(f"masquerade set {sorted(masq)} != live {sorted(want_masq)}")
        for s in live:
            if s.kind == "bridge" and not rel.ping(self.node, s.ip):
                self.stats.problems.append(f"{s.ip} ({s.cid}) does not answer")

    def _masquerade_addresses(self) -> set[str]:
        data = json.loads(rel.sh("nft", "-j", "list", "ruleset", ns=self.node) or '{"nftables": []}')
        out = set()
        for obj in data["nftables"]:
            s = obj.get("set")
            if s and s.get("table") == "pycni" and s["name"].startswith("a4_"):
                for elem in s.get("elem", []):
                    val = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                    out.add(str(val))
        return out

    # -- driving --------------------------------------------------------------------------------------

    def run(self, ops: int, deadline: float | None = None) -> Stats:
        per_worker = [ops // len(self.slots) + (1 if i < ops % len(self.slots) else 0)
                      for i in range(len(self.slots))]
        seeds = [self.random.randrange(1 << 30) for _ in self.slots]
        failures: list[BaseException] = []

        def loop(w: int) -> None:
            r = rel.rng(seeds[w])
            try:
                for _ in range(per_worker[w]):
                    if deadline and time.monotonic() > deadline:
                        return
                    self.step(w, r)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                failures.append(exc)

        threads = [threading.Thread(target=loop, args=(w,)) for w in range(len(self.slots))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        self.lock.acquire_write()
        try:
            self.full_check()
            self.teardown()
        finally:
            self.lock.release_write()
        return self.stats

    def teardown(self) -> None:
        """DEL every live attachment; the node must be back to its baseline."""
        for w, mine in enumerate(self.slots):
            for slot in mine:
                if slot.cid:
                    route = "worker" if slot.kind == "bridge" else "hl"
                    res = self._call(w, "DEL", slot, slot.cid, route)
                    if res.returncode != 0:
                        self._error(res, "final DEL")
                    slot.cid = slot.ip = slot.result = None
        after = self.state()
        for key in ("store", "links", "firewall"):
            if after[key] != self.baseline[key]:
                self.stats.leaks += 1
                self.stats.problems.append(f"after the final DELs the {key} differs from the baseline")


def table(stats: Stats, seconds: float, title: str = "") -> str:
    rows = [("operations", stats.total), ("  ADD", stats.ops["ADD"]), ("  DEL", stats.ops["DEL"]),
            ("  CHECK", stats.ops["CHECK"]), ("  GC", stats.ops["GC"]), ("kills", stats.kills),
            ("full invariant checks", stats.full_checks), ("leaks found", stats.leaks),
            ("duplicates found", stats.duplicates)]
    rows += [(f"errors, code {code}", n) for code, n in sorted(stats.errors.items(), key=lambda kv: str(kv[0]))]
    if not stats.errors:
        rows.append(("errors", 0))
    rows += [(f"route {k}", v) for k, v in sorted(stats.routes.items())]
    rows.append(("seconds", f"{seconds:.1f}"))
    width = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    lines += [f"  {k:<{width}}  {v:>8}" for k, v in rows]
    return "\n".join(lines)
