#!/usr/bin/env python3
"""pycni against the Go reference plugins, on this machine, in one run (docs/performance.md).

    sudo .venv/bin/python bench/bench.py            # full run, ~3-5 min; make bench runs this
    sudo .venv/bin/python bench/bench.py --quick    # smoke run (seconds): proves the benchmark works

Every mode runs the same configuration (a bridge `cni0` with isGateway and host-local IPAM on a
/16; only `type` and `ipam.type` differ) in the same run:

  go     the current reference `bridge` + `host-local` (build/ref, built by `make build` from the
         version pinned in integration/cni/go.mod), exec'd per verb: every ratio is against this
  go-debian  Debian's reference plugins (/usr/lib/cni, 1.1.1), ADD/CHECK/DEL and VERSION only (a
         second Go column; skipped when not installed)
  cold   pycni exec'd per verb with no daemon (the shim finds no socket and runs the verb itself)
  warm   pycni exec'd per verb with `pycni daemon` running: the Python shim hands the request over
  native the same, with the optional native shim (src/pycni/daemon/shim.c, built here with cc) as the
         exec'd `pycni`: no interpreter start on the warm path (skipped when there is no C compiler)

pycni runs from launchers installed by `make install` into a scratch directory (with --quick: launchers
of the same shape for the running venv, so no package is downloaded). Every mode gets its own node
network namespace (the plugins and the daemon run there) and its pods are namespaces created here;
everything is deleted at the end, the daemon stopped by its PID.

Measured: ADD, CHECK, DEL (and the ADD+DEL cycle), STATUS (not Debian's plugins: they predate CNI
1.1), VERSION exec'd directly and through libcni (build/bin/pycni-cnitool), ADD and DEL through libcni,
a burst of pods ADDed at a given concurrency (wall time, p95 per ADD), ADD latency with 0 / 250 /
1,000 leases already held in the /16 (lease files created beforehand, right after the round-robin
cursor so that every ADD has to skip them), peak RSS of each exec (wait4 rusage) and of the daemon.
CPU time too, because wall time on a loaded machine measures the load: each exec's own (wait4: the
process and the children it reaped, so Go's bridge includes its host-local) and, for the daemon
modes, the daemon's per ADD and per DEL (its processes' utime + stime from /proc, around each
request). Every run records the machine (CPU model and count, kernel, the Python build of the
launchers, load average before and after) and checks the targets of issue 13.
Results: a table on stdout, JSON in build/bench/latest.json (plus a timestamped copy) and the same
as Markdown in build/bench/latest.md; `--update-docs` puts that Markdown into docs/performance.md
(between its `bench:begin` / `bench:end` markers).

Network safety: every plugin, cnitool and daemon runs in a node namespace created here (checked
before every exec: never the namespace the benchmark started in); nothing routes outside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import datetime
import ipaddress
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import coldpath  # bench/coldpath.py, next to this file
import daemon_cpu  # bench/daemon_cpu.py: the daemon's process tree and how it is stopped

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "build" / "ref"  # `make build`: the reference plugins of integration/cni/go.mod
DEBIAN_REFERENCE = Path("/usr/lib/cni")
CNITOOL = ROOT / "build" / "bin" / "pycni-cnitool"
OUT_DIR = ROOT / "build" / "bench"
SUBNET = ipaddress.ip_network("10.99.0.0/16")
MODES = ("go", "go-debian", "cold", "warm", "native")
GO_MODES = ("go", "go-debian")
DOCS = ROOT / "docs" / "performance.md"
DOCS_BEGIN, DOCS_END = "<!-- bench:begin -->", "<!-- bench:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET_LOAD = 0.5  # 1-minute load average at the start below which a run counts as quiet
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
HOME_NETNS_INODE = os.stat("/proc/self/ns/net").st_ino


# -- processes ----------------------------------------------------------------------------------------


class Run:
    __slots__ = ("cpu", "maxrss_kib", "seconds", "status", "stderr", "stdout")

    def __init__(self, status: int, stdout: bytes, stderr: bytes, seconds: float, maxrss_kib: int, cpu: float) -> None:
        self.status, self.stdout, self.stderr, self.seconds, self.maxrss_kib = status, stdout, stderr, seconds, maxrss_kib
        self.cpu = cpu  # seconds of CPU (user + system) of the process and the children it reaped


def execute(argv: list[str], env: dict[str, str], stdin: bytes = b"", timeout: float = 120) -> Run:
    """Exec `argv` the way a runtime does (env + stdin, read stdout/stderr), timed from spawn to reap;
    wait4 gives the child's peak RSS and CPU time. Refuses to run in the benchmark's own namespace."""
    if os.stat("/proc/thread-self/ns/net").st_ino == HOME_NETNS_INODE:
        raise RuntimeError(f"refusing to exec {argv[0]} in the namespace the benchmark started in")
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, r_in, 0), (os.POSIX_SPAWN_DUP2, w_out, 1), (os.POSIX_SPAWN_DUP2, w_err, 2)]
    start = time.perf_counter()
    try:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    finally:
        for fd in (r_in, w_out, w_err):
            os.close(fd)
    try:
        if stdin:
            os.write(w_in, stdin)  # configurations are far below the pipe buffer
    except BrokenPipeError:
        pass
    os.close(w_in)
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(r_out, selectors.EVENT_READ, out)
    sel.register(r_err, selectors.EVENT_READ, err)
    deadline = start + timeout
    while sel.get_map():
        events = sel.select(max(0.0, deadline - time.perf_counter()))
        if not events:
            os.kill(pid, signal.SIGKILL)
            break
        for key, _ in events:
            chunk = os.read(key.fd, 65536)
            if chunk:
                key.data.extend(chunk)
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
    for fd in list(sel.get_map()):
        sel.unregister(fd)
        os.close(fd)
    sel.close()
    _, wstatus, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    return Run(os.waitstatus_to_exitcode(wstatus), bytes(out), bytes(err), seconds, usage.ru_maxrss,
               usage.ru_utime + usage.ru_stime)


class CpuMeter:
    """CPU time of a process and everything it starts (threads that exited, worker processes): a
    cpuacct cgroup of its own (cgroup v1 cpuacct.usage, ns; or cgroup v2 cpu.stat usage_usec); when
    neither can be made, the process tree's utime + stime from /proc (clock ticks: coarse)."""

    V1, V2 = Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup")

    def __init__(self, name: str) -> None:
        self.pid = 0
        self.path: Path | None = None
        for parent in (self.V1, self.V2):
            if (parent / "cpuacct.usage").exists() or (parent / "cgroup.controllers").exists():
                try:
                    (parent / name).mkdir()
                except OSError:
                    continue
                self.path = parent / name
                break

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv`, started inside the cgroup (the shell moves itself there, then execs it)."""
        if self.path is None:
            return argv
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def seconds(self) -> float:
        if self.path is not None:
            if (self.path / "cpuacct.usage").exists():
                return int((self.path / "cpuacct.usage").read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        return self._proc_ticks() / CLK_TCK

    def _proc_ticks(self) -> int:
        children: dict[int, list[int]] = {}
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rpartition(")")[2].split()
            except OSError:
                continue  # exited meanwhile
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            fields = stats.get(pid)
            if fields is not None:  # after ")": state ppid ...; utime stime cutime cstime are fields 14-17
                total += sum(int(x) for x in fields[11:15])
            todo += children.get(pid, [])
        return total

    def remove(self) -> None:
        """Remove the cgroup (once the process is gone)."""
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError as exc:
                print(f"bench: could not remove {self.path}: {exc}", file=sys.stderr)
            self.path = None


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Namespaces:
    """Network namespaces created by this run (`ip netns add`), all deleted by cleanup()."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.names: list[str] = []

    def create(self, kind: str) -> str:
        name = f"pycnib-{self.tag}-{kind}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def delete(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if name in self.names:
            self.names.remove(name)

    def cleanup(self) -> None:
        for name in reversed(list(self.names)):
            self.delete(name)


def path_of(ns: str) -> str:
    return f"/var/run/netns/{ns}"


# -- statistics ---------------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(samples: list[float]) -> dict:
    ms = [x * 1000 for x in samples]
    return {"n": len(ms), "p50": round(pct(ms, 0.5), 2), "p95": round(pct(ms, 0.95), 2),
            "min": round(min(ms), 2) if ms else None, "max": round(max(ms), 2) if ms else None}


# -- one mode -----------------------------------------------------------------------------------------


class Mode:
    def __init__(self, name: str, tmp: Path, bin_dir: Path, nss: Namespaces, args: argparse.Namespace) -> None:
        self.name = name
        self.tmp = tmp / name
        self.tmp.mkdir()
        self.go = name in GO_MODES
        self.bin_dir = bin_dir
        self.nss = nss
        self.args = args
        self.node = nss.create("node")
        self.node_fd = os.open(path_of(self.node), os.O_RDONLY | os.O_CLOEXEC)
        self.data_dir = self.tmp / "ipam"
        self.plugin = "bridge" if self.go else "pycni"
        self.ipam = "host-local" if self.go else "pycni-host-local"
        self.socket = self.tmp / "run" / "pycni.sock"  # only the warm mode starts a daemon there
        self.daemon: subprocess.Popen | None = None
        self.daemon_meter: CpuMeter | None = None
        self.count = 0
        self.pods: list[str] = []
        self.rss: list[int] = []
        self.rss_add: list[int] = []  # KiB, wait4's ru_maxrss of each timed ADD exec
        self.results: dict[str, dict] = {}
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}  # CPU seconds per exec; "daemon ..." keys: the daemon's
        conf_dir = self.tmp / "netconf"
        conf_dir.mkdir()
        (conf_dir / "10-bench.conf").write_text(json.dumps(self.conf()))
        self.conf_dir = conf_dir

    # configuration: identical for every mode but for the plugin types
    def conf(self, version: str = "1.0.0") -> dict:
        return {"cniVersion": version, "name": "bench", "type": self.plugin, "bridge": "cni0", "isGateway": True,
                "ipam": {"type": self.ipam, "ranges": [[{"subnet": str(SUBNET)}]], "dataDir": str(self.data_dir)}}

    def env(self, command: str, cid: str | None = None, netns: str | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_PATH": str(self.bin_dir), "CNI_IFNAME": "eth0"}
        if cid:
            env["CNI_CONTAINERID"] = cid
        if netns:
            env["CNI_NETNS"] = netns
        if not self.go:
            # cold: the shim looks for a daemon and finds none; warm: it finds this run's daemon
            env["PYCNI_SOCKET"] = str(self.socket)
        return env

    def enter(self) -> None:
        setns(self.node_fd)

    def plugin_run(self, command: str, conf: dict, cid: str | None = None, netns: str | None = None,
                   exe: str | None = None) -> Run:
        run = execute([str(self.bin_dir / (exe or self.plugin))], self.env(command, cid, netns),
                      json.dumps(conf).encode())
        if run.status != 0:
            raise RuntimeError(f"{self.name}: {command} failed ({run.status}): {run.stdout[:500]!r} "
                               f"{run.stderr[-1500:]!r}")
        self.rss.append(run.maxrss_kib)
        return run

    def cid(self) -> str:
        self.count += 1
        return f"bench-{self.name}-{self.count:05d}"

    def record(self, key: str, seconds: float, cpu: float | None = None) -> None:
        self.samples.setdefault(key, []).append(seconds)
        if cpu is not None:
            self.cpu.setdefault(key, []).append(cpu)

    # -- the daemon ---------------------------------------------------------------------------------

    def start_daemon(self) -> None:
        self.socket.parent.mkdir(mode=0o700)
        meter = CpuMeter(f"pycni-bench-{self.nss.tag}-{self.name}")
        with open(self.tmp / "daemon.log", "wb") as log:
            self.daemon = subprocess.Popen(meter.wrap([str(self.bin_dir / "pycni"), "daemon", "--socket", str(self.socket),
                                                       "--cni-path", str(self.bin_dir)]),
                                           stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        meter.pid = self.daemon.pid
        self.daemon_meter = meter
        sel = selectors.DefaultSelector()
        assert self.daemon.stdout is not None
        sel.register(self.daemon.stdout, selectors.EVENT_READ)
        if not sel.select(60):
            raise RuntimeError("the pycni daemon did not become ready in 60 s")
        line = self.daemon.stdout.readline().decode().strip()
        sel.close()
        if not line.startswith("ready"):
            raise RuntimeError(f"the pycni daemon failed to start: {line!r}, see {self.tmp / 'daemon.log'}")

    def daemon_cpu(self) -> float:
        """CPU seconds (user + system) used so far by the daemon and everything under it."""
        return self.daemon_meter.seconds() if self.daemon_meter is not None else 0.0

    def daemon_memory(self) -> dict:
        """KiB: VmHWM of the daemon's main process, and Pss of all its processes (main, zygote, worker
        processes: the pages they share counted once, split between them)."""
        if self.daemon is None:
            return {}
        out = {"Pss": 0}
        with open(f"/proc/{self.daemon.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == "VmHWM":
                    out[key] = int(value.split()[0])
        for pid in daemon_cpu.tree(self.daemon.pid):
            try:
                with open(f"/proc/{pid}/smaps_rollup") as fh:
                    out["Pss"] += next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
            except (OSError, StopIteration):
                continue
        return out

    def stop_daemon(self) -> None:
        daemon_cpu.stop_daemon(self.daemon)
        if self.daemon is not None and self.daemon.stdout is not None:
            self.daemon.stdout.close()
        if self.daemon_meter is not None:
            self.daemon_meter.remove()

    # -- the measurements ---------------------------------------------------------------------------

    def pod(self) -> str:
        if not self.pods:
            self.pods = [self.nss.create("pod") for _ in range(4)]
        self.pods.append(self.pods.pop(0))
        return path_of(self.pods[-1])

    def cycles(self, rounds: int, warmup: int = 2) -> None:
        conf = self.conf()
        for i in range(warmup + rounds):
            netns, cid = self.pod(), self.cid()
            d0 = self.daemon_cpu()
            add = self.plugin_run("ADD", conf, cid, netns)
            d1 = self.daemon_cpu()
            check_conf = dict(conf, prevResult=json.loads(add.stdout))
            check = self.plugin_run("CHECK", check_conf, cid, netns)
            d2 = self.daemon_cpu()
            delete = self.plugin_run("DEL", conf, cid, netns)
            d3 = self.daemon_cpu()
            if i >= warmup:
                self.record("ADD", add.seconds, add.cpu)
                self.record("CHECK", check.seconds, check.cpu)
                self.record("DEL", delete.seconds, delete.cpu)
                self.record("ADD+DEL", add.seconds + delete.seconds, add.cpu + delete.cpu)
                self.rss_add.append(add.maxrss_kib)
                if self.daemon is not None:
                    self.cpu.setdefault("daemon ADD", []).append(d1 - d0)
                    self.cpu.setdefault("daemon DEL", []).append(d3 - d2)

    def cold_stages(self, rounds: int) -> None:
        """Cold only: where the CPU of an exec'd ADD and DEL goes, stage by stage (bench/coldpath.py)."""
        python = (self.bin_dir / "pycni").read_text().splitlines()[0][2:].split()[0]  # the launcher's interpreter
        conf, runs = self.conf(), {"ADD": [], "DEL": []}
        for _ in range(rounds):
            netns, cid = self.pod(), self.cid()
            for verb in ("ADD", "DEL"):
                run = execute([python, "-I", "-c", coldpath.SCRIPT], self.env(verb, cid, netns), json.dumps(conf).encode())
                stages = coldpath.parse(run.stderr)
                if run.status != 0 or stages is None:
                    raise RuntimeError(f"cold {verb} by stage failed ({run.status}): {run.stderr[-1500:]!r}")
                runs[verb].append(stages)
        self.results["cold by stage"] = {verb: coldpath.median_stages(r) for verb, r in runs.items()}

    def simple(self, rounds: int) -> None:
        for _ in range(rounds):
            run = self.plugin_run("VERSION", {"cniVersion": "1.0.0"})
            self.record("VERSION", run.seconds, run.cpu)
        if self.name != "go-debian":  # STATUS is CNI 1.1; Debian's reference plugins (1.1.1) predate it
            for _ in range(rounds):
                run = self.plugin_run("STATUS", self.conf("1.1.0"))
                self.record("STATUS", run.seconds, run.cpu)

    def libcni(self, rounds: int) -> None:
        if not CNITOOL.exists():
            return
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_PATH": str(self.bin_dir),
                "NETCONFPATH": str(self.conf_dir), "CNI_CACHE_DIR": str(self.tmp / "cache")}
        if not self.go:
            base["PYCNI_SOCKET"] = str(self.socket)
        for _ in range(rounds):
            run = execute([str(CNITOOL), "version", self.plugin], base)
            assert run.status == 0, run.stderr
            self.record("VERSION via libcni", run.seconds)
        for _ in range(rounds):
            netns = self.pod()
            env = dict(base, CNI_CONTAINERID=self.cid())
            add = execute([str(CNITOOL), "add", "bench", netns], env)
            assert add.status == 0, add.stderr
            delete = execute([str(CNITOOL), "del", "bench", netns], env)
            assert delete.status == 0, delete.stderr
            self.record("ADD via libcni", add.seconds)
            self.record("DEL via libcni", delete.seconds)

    def leases(self, counts: list[int], rounds: int) -> None:
        """ADD latency with `n` leases held right after the round-robin cursor (each ADD skips them all)."""
        conf = self.conf()
        net_dir = self.data_dir / "bench"
        first = SUBNET.network_address + 2
        made: list[Path] = []
        for n in counts:
            while len(made) < n:  # leases as host-local writes them: "<containerID>\r\n<ifname>", 0644
                path = net_dir / str(first + len(made))
                path.write_text(f"bench-filler-{len(made):05d}\r\neth0")
                path.chmod(0o644)
                made.append(path)
            for i in range(rounds + 1):
                (net_dir / "last_reserved_ip.0").write_text(str(SUBNET.network_address + 1))
                netns, cid = self.pod(), self.cid()
                add = self.plugin_run("ADD", conf, cid, netns)
                ip = json.loads(add.stdout)["ips"][0]["address"].split("/")[0]
                assert ipaddress.ip_address(ip) == first + n, (ip, n)  # it did skip every held lease
                self.plugin_run("DEL", conf, cid, netns)
                if i:
                    self.record(f"ADD, {n} leases held", add.seconds, add.cpu)
        for path in made:
            path.unlink()

    def burst(self, pods: int, concurrency: int) -> None:
        conf = self.conf()
        spaces = [path_of(self.nss.create("burst")) for _ in range(pods)]
        cids = [self.cid() for _ in spaces]

        def one(command: str, i: int) -> Run:
            return self.plugin_run(command, conf, cids[i], spaces[i])

        for command in ("ADD", "DEL"):
            daemon_before = self.daemon_cpu()
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency, initializer=self.enter) as pool:
                runs = list(pool.map(lambda i, c=command: one(c, i), range(pods)))
            wall = time.perf_counter() - start
            cpu = sum(r.cpu for r in runs) + self.daemon_cpu() - daemon_before  # execs + daemon, per pod
            self.results[f"burst {command}"] = {"pods": pods, "concurrency": concurrency, "wall_s": round(wall, 3),
                                                "cpu_per_pod_ms": round(cpu / pods * 1000, 2),
                                                **{k: v for k, v in summary([r.seconds for r in runs]).items()}}
        for netns in spaces:
            self.nss.delete(Path(netns).name)

    def finish(self) -> None:
        for key, samples in self.samples.items():
            self.results[key] = summary(samples)
        for key, samples in self.cpu.items():
            self.results.setdefault(key, {})["cpu"] = summary(samples)
        if self.rss_add:
            self.results["peak RSS (ADD exec)"] = {"n": len(self.rss_add),
                                                   "p50_mb": round(pct(self.rss_add, 0.5) / 1024, 1),
                                                   "max_mb": round(max(self.rss_add) / 1024, 1)}
        if self.daemon is not None:
            mem = self.daemon_memory()
            self.results["daemon memory"] = {"pss_mb": round(mem.get("Pss", 0) / 1024, 1),
                                             "peak_mb": round(mem.get("VmHWM", 0) / 1024, 1)}


# -- setup, report ------------------------------------------------------------------------------------


def install(tmp: Path, quick_launchers: bool) -> Path:
    bin_dir = tmp / "bin"
    if quick_launchers:  # launchers exactly like `make install` writes them, for the running venv
        bin_dir.mkdir()
        for exe, func in (("pycni", "main_bridge"), ("pycni-host-local", "main_host_local")):
            path = bin_dir / exe
            path.write_text(f"#!{sys.executable} -I\nfrom pycni.cli import {func}\n{func}()\n")
            path.chmod(0o755)
        return bin_dir
    home = tmp / "home"
    proc = subprocess.run(["make", "-C", str(ROOT), "install", f"CNI_BIN_DIR={bin_dir}", f"PYCNI_HOME={home}",
                           "NATIVE_SHIM=0"],  # the Python launchers: cold and warm; the shim is the native mode
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"make install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return bin_dir


def build_native(tmp: Path, bin_dir: Path) -> Path | None:
    """The native shim (integration/shim/build.sh: static, as make install builds it) for this installation."""
    if (shutil.which("cc") or shutil.which("gcc")) is None:
        return None
    python = (bin_dir / "pycni").read_text().splitlines()[0][2:].split()[0]  # the launcher's interpreter
    out = tmp / "bin-native"
    out.mkdir()
    subprocess.run(["bash", str(ROOT / "integration" / "shim" / "build.sh"), str(out / "pycni"), python], check=True)
    (out / "pycni-host-local").symlink_to("pycni")
    return out


ROWS = ["ADD", "CHECK", "DEL", "ADD+DEL", "STATUS", "VERSION", "VERSION via libcni", "ADD via libcni",
        "DEL via libcni"]
CPU_ROWS = ["ADD", "DEL", "ADD+DEL", "VERSION", "ADD, 0 leases held", "ADD, 1000 leases held"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def table(report: dict) -> str:
    """Wall time (p50 / p95) of every row, then CPU time, each with its ratio to the Go reference."""
    res = report["results"]
    lease_rows = sorted({k for m in MODES for k in res.get(m, {}) if k.startswith("ADD, ")},
                        key=lambda k: int(k.split()[1]))
    lines = []
    shown = [m for m in MODES if m in res]
    others = [m for m in shown if m != "go"]
    head = f"{'wall ms (p50 / p95)':<26}" + "".join(f"{m:>16}" for m in shown) + "".join(f"{m + '/go':>13}" for m in others)
    lines += [head, "-" * len(head)]

    def cell(m: str, key: str) -> str:
        r = res.get(m, {}).get(key)
        return f"{r['p50']:>7.1f} /{r['p95']:>6.1f}" if r and "p50" in r else f"{'n/a':>14}"

    def ratio(m: str, key: str, field: str = "p50", sub: str | None = None) -> str:
        a, b = res.get(m, {}).get(key), res.get("go", {}).get(key)
        if sub:
            a, b = (a or {}).get(sub), (b or {}).get(sub)
        value = _ratio((a or {}).get(field), (b or {}).get(field))
        return f"{value:>12.2f}x" if value is not None else f"{'n/a':>13}"

    for key in ROWS + lease_rows:
        if not any("p50" in res.get(m, {}).get(key, {}) for m in shown):
            continue
        lines.append(f"{key:<26}" + "".join(f"{cell(m, key):>16}" for m in shown) + "".join(ratio(m, key) for m in others))
    for verb in ("ADD", "DEL"):
        key = f"burst {verb}"
        if not any(key in res.get(m, {}) for m in shown):
            continue
        any_r = next(res[m][key] for m in shown if key in res.get(m, {}))
        title = f"burst {verb} {any_r['pods']}@{any_r['concurrency']}"
        lines.append(f"{title + ' wall s':<26}" + "".join(
            f"{res[m][key]['wall_s']:>16.2f}" if key in res.get(m, {}) else f"{'n/a':>16}" for m in shown)
            + "".join(ratio(m, key, "wall_s") for m in others))
        lines.append(f"{'  per ' + verb + ' p50 / p95':<26}" + "".join(f"{cell(m, key):>16}" for m in shown)
                     + "".join(ratio(m, key) for m in others))
        lines.append(f"{'  CPU per pod ms':<26}" + "".join(
            f"{res[m][key]['cpu_per_pod_ms']:>16.1f}" if key in res.get(m, {}) else f"{'n/a':>16}" for m in shown)
            + "".join(ratio(m, key, "cpu_per_pod_ms") for m in others))
    rss = "peak RSS (ADD exec)"
    lines.append(f"{'peak RSS per ADD exec MB':<26}" + "".join(
        f"{res[m][rss]['max_mb']:>16.1f}" if rss in res.get(m, {}) else f"{'n/a':>16}" for m in shown))
    lines.append(f"{'daemon PSS / main peak MB':<26}" + "".join(
        f"{res[m]['daemon memory']['pss_mb']:>9.1f} /{res[m]['daemon memory']['peak_mb']:>5.1f}"
        if "daemon memory" in res.get(m, {}) else f"{'':>16}" for m in shown))
    head = f"{'CPU ms of one exec':<26}" + "".join(f"{m:>16}" for m in shown) + "".join(f"{m + '/go':>13}" for m in others)
    lines += ["", head, "-" * len(head)]

    def cpu_cell(m: str, key: str) -> str:
        r = res.get(m, {}).get(key, {}).get("cpu")
        return f"{r['p50']:>7.1f} /{r['p95']:>6.1f}" if r else f"{'':>14}"

    for key in CPU_ROWS:
        if any("cpu" in res.get(m, {}).get(key, {}) for m in shown):
            lines.append(f"{key.replace(' held', ''):<26}" + "".join(f"{cpu_cell(m, key):>16}" for m in shown)
                         + "".join(ratio(m, key, sub="cpu") for m in others))
    for key in ("daemon ADD", "daemon DEL"):
        if any(key in res.get(m, {}) for m in shown):
            lines.append(f"{key.replace('daemon', 'the daemon, per'):<26}" + "".join(f"{cpu_cell(m, key):>16}" for m in shown))
    if "cold by stage" in res.get("cold", {}):
        lines += ["", coldpath.text(res["cold"]["cold by stage"])]
    return "\n".join(lines)


def _p50(res: dict, mode: str, key: str, field: str = "p50", sub: str | None = None) -> float | None:
    row = res.get(mode, {}).get(key) or {}
    if sub:
        row = row.get(sub) or {}
    return row.get(field)


def targets(res: dict) -> list[dict]:
    """Issue 13's targets (p50, one run, same machine, against the Go reference of this run)."""
    out = []

    def target(name: str, value: float | None, limit: float, unit: str = "x") -> None:
        out.append({"target": name, "value": value, "limit": limit, "unit": unit,
                    "met": None if value is None else value <= limit})

    for mode in ("warm", "native"):
        target(f"{mode} ADD+DEL vs go", _ratio(_p50(res, mode, "ADD+DEL"), _p50(res, "go", "ADD+DEL")), 0.7)
    target("cold ADD vs go", _ratio(_p50(res, "cold", "ADD"), _p50(res, "go", "ADD")), 10.0)
    target("cold ADD vs go, CPU", _ratio(_p50(res, "cold", "ADD", sub="cpu"), _p50(res, "go", "ADD", sub="cpu")), 10.0)
    for mode in ("warm", "native"):
        target(f"{mode} burst ADD wall vs go", _ratio(_p50(res, mode, "burst ADD", "wall_s"),
                                                      _p50(res, "go", "burst ADD", "wall_s")), 1.0)
    for mode in ("cold", "warm", "native"):
        target(f"{mode} ADD at 1000 leases vs 0", _ratio(_p50(res, mode, "ADD, 1000 leases held"),
                                                         _p50(res, mode, "ADD, 0 leases held")), 1.1)
    for mode in ("warm", "native"):
        target(f"{mode} daemon CPU per ADD", _p50(res, mode, "daemon ADD", sub="cpu"), 3.0, " ms")
    return [t for t in out if t["value"] is not None]


def targets_text(rows: list[dict]) -> str:
    return "\n".join(f"{t['target']:<34} {t['value']:>8.2f}{t['unit']:<3} (target <= {t['limit']:g}{t['unit'].strip()}): "
                     f"{'met' if t['met'] else 'NOT MET'}" for t in rows)


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def python_build(python: str) -> dict:
    """The interpreter the launchers run: version, executable, shared libpython or not."""
    code = ("import json, os, sys, sysconfig; print(json.dumps({'version': sys.version, 'executable': "
            "os.path.realpath(sys.executable), 'shared_libpython': bool(sysconfig.get_config_var('Py_ENABLE_SHARED')), "
            "'implementation': sys.implementation.name}))")
    proc = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-300:]}


def machine(python: str) -> dict:
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    ref_version = (REFERENCE / "VERSION").read_text().strip() if (REFERENCE / "VERSION").exists() else "?"
    debian = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu_model": _first_line("/proc/cpuinfo", "model name"), "cpus": os.cpu_count(),
            "memory_gib": round(mem_kib / 2**20, 1), "kernel": platform.release(), "python": python_build(python),
            "go_reference": f"containernetworking/plugins {ref_version} ({REFERENCE.relative_to(ROOT)})",
            "go_debian": f"containernetworking-plugins {debian} ({DEBIAN_REFERENCE})" if debian else "not installed"}


def markdown(report: dict) -> str:
    meta, m = report["meta"], report["meta"]["machine"]
    py = m["python"]
    lines = [(f"`make bench` of {meta['date']} (commit {meta['git']}, {meta['rounds']} rounds, {meta['seconds']} s, "
             f"launchers: {meta['launchers']}{', quick run' if meta['quick'] else ''}):"),
             "",
             f"* machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, kernel {m['kernel']}",
             (f"* Python: {py.get('version', '?').split()[0]} ({py.get('executable', '?')}, "
             f"{'shared' if py.get('shared_libpython') else 'static'} libpython)"),
             f"* Go reference: {m['go_reference']}; second column: {m['go_debian']}",
             (f"* load average (1/5/15 min) before {' / '.join(map(str, meta['load_before']))}, "
             f"after {' / '.join(map(str, meta['load_after']))}"),
             *([] if meta["load_before"][0] < QUIET_LOAD else [
                 "", (f"**Load average {meta['load_before'][0]} at the start: other work was running, so these numbers "
                      "are disturbed by it (CPU times less so than wall times); the targets are judged on a quiet run.**")]),
             "", "```", report["table_text"], "```", "", "Targets of issue 13 (p50, against `go` of the same run):", "",
             "```", targets_text(report["targets"]), "```"]
    return "\n".join(lines) + "\n"


def update_docs(text: str) -> None:
    doc = DOCS.read_text()
    start, end = doc.find(DOCS_BEGIN), doc.find(DOCS_END)
    if start < 0 or end < start:
        raise SystemExit(f"{DOCS}: no {DOCS_BEGIN} ... {DOCS_END} block")
    DOCS.write_text(doc[:start + len(DOCS_BEGIN)] + "\n" + text + doc[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few rounds, small burst")
    parser.add_argument("--install", action="store_true", help="with --quick: still use `make install` launchers")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 30, quick 3)")
    parser.add_argument("--burst", type=int, help="pods in the burst (default 100, quick 8)")
    parser.add_argument("--concurrency", type=int, help="parallel ADDs in the burst (default 10, quick 4)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--json", type=Path, default=OUT_DIR / "latest.json", help="where to write the results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (not the namespaces)")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"put the Markdown report into {DOCS.relative_to(ROOT)} (between the bench markers)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.py needs root (network namespaces)", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 30)
    lease_rounds = max(2, rounds // 2)
    burst = args.burst or (8 if args.quick else 100)
    concurrency = args.concurrency or (4 if args.quick else 10)
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        parser.error(f"unknown mode in {args.modes!r}")
    if "go" in modes and not (REFERENCE / "bridge").exists():
        parser.error(f"no Go reference in {REFERENCE}: run `make build` first")
    if "go-debian" in modes and not (DEBIAN_REFERENCE / "bridge").exists():
        print(f"no {DEBIAN_REFERENCE}/bridge: skipping the go-debian column", file=sys.stderr)
        modes.remove("go-debian")

    load_before = os.getloadavg()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
    tag = uuid.uuid4().hex[:4]
    nss = Namespaces(tag)
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    active: list[Mode] = []
    report: dict = {"results": {}}
    machine_record: dict = {}
    try:
        bin_dir = install(tmp, args.quick and not args.install)
        machine_record = machine((bin_dir / "pycni").read_text().splitlines()[0][2:].split()[0])
        native_dir = build_native(tmp, bin_dir) if "native" in modes else None
        if "native" in modes and native_dir is None:
            print("no C compiler: skipping the native mode", file=sys.stderr)
            modes.remove("native")
        dirs = {"go": REFERENCE, "go-debian": DEBIAN_REFERENCE, "native": native_dir}
        for name in modes:
            mode = Mode(name, tmp, dirs.get(name) or bin_dir, nss, args)
            active.append(mode)
            mode.enter()
            try:
                if name in ("warm", "native"):
                    mode.start_daemon()
                print(f"[{name}] cycles", file=sys.stderr, flush=True)
                mode.cycles(rounds)
                mode.simple(rounds)
                if name == "cold":
                    mode.cold_stages(max(3, rounds // 3))
                if name == "go-debian":  # the second Go column: the basic verbs only
                    mode.finish()
                    report["results"][name] = mode.results
                    continue
                print(f"[{name}] libcni", file=sys.stderr, flush=True)
                mode.libcni(max(3, rounds // 2))
                print(f"[{name}] leases", file=sys.stderr, flush=True)
                mode.leases([0, 250, 1000], lease_rounds)
                print(f"[{name}] burst", file=sys.stderr, flush=True)
                mode.burst(burst, concurrency)
                mode.finish()
                report["results"][name] = mode.results
            finally:
                mode.stop_daemon()
                setns(home_fd)
                for ns in mode.pods:
                    nss.delete(ns)
                mode.pods = []
    finally:
        for mode in active:
            mode.stop_daemon()
        setns(home_fd)
        nss.cleanup()
        for mode in active:
            os.close(mode.node_fd)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report["meta"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1), "quick": args.quick, "rounds": rounds,
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "machine": machine_record, "tag": tag,  # in the names of its namespaces and cgroups
        "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
        + ("+dirty" if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                      capture_output=True, text=True, check=False).stdout.strip() else ""),
        "launchers": "venv" if args.quick and not args.install else "make install",
    }
    text = table(report)
    report["table"] = text.splitlines()
    report["targets"] = targets(report["results"])
    report["table_text"] = text
    md = markdown(report)
    del report["table_text"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    args.json.with_suffix(".md").write_text(md)
    if args.json == OUT_DIR / "latest.json" and not args.quick:
        stamp = report["meta"]["date"].replace(":", "").replace("+0000", "Z")
        (OUT_DIR / f"bench-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.update_docs:
        update_docs(md)
    meta, m = report["meta"], report["meta"]["machine"]
    print(f"pycni benchmark {meta['date']} ({meta['seconds']} s, launchers: {meta['launchers']})")
    print(f"machine: {m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}; Python "
          f"{m['python'].get('version', '?').split()[0]} {m['python'].get('executable', '?')} "
          f"({'shared' if m['python'].get('shared_libpython') else 'static'} libpython); load average "
          f"{meta['load_before']} before / {meta['load_after']} after")
    print(f"Go reference: {m['go_reference']}; second column: {m['go_debian']}")
    print(text)
    print()
    print(targets_text(report["targets"]))
    print(f"JSON: {args.json}, Markdown: {args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
