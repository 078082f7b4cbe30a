#!/usr/bin/env python3
"""pycni against the Go reference plugins, on this machine, in one run (docs/performance.md).

    sudo .venv/bin/python bench/bench.py            # full run, ~3-5 min; make bench runs this
    sudo .venv/bin/python bench/bench.py --quick    # smoke run (seconds): proves the benchmark works

Three modes run the same configuration (a bridge `cni0` with isGateway and host-local IPAM on a
/16; only `type` and `ipam.type` differ) in the same run:

  go     Debian's reference `bridge` + `host-local` (/usr/lib/cni), exec'd per verb
  cold   pycni exec'd per verb with no daemon (the shim finds no socket and runs the verb itself)
  warm   pycni exec'd per verb with `pycni daemon` running: the Python shim hands the request over
  native the same, with the optional native shim (src/pycni/daemon/shim.c, built here with cc) as the
         exec'd `pycni`: no interpreter start on the warm path (skipped when there is no C compiler)

pycni runs from launchers installed by `make install` into a scratch directory (with --quick: launchers
of the same shape for the running venv, so no package is downloaded). Every mode gets its own node
network namespace (the plugins and the daemon run there) and its pods are namespaces created here;
everything is deleted at the end, the daemon stopped by its PID.

Measured: ADD, CHECK, DEL (and the ADD+DEL cycle), STATUS (pycni only: Debian's plugins predate CNI
1.1), VERSION exec'd directly and through libcni (build/bin/pycni-cnitool), ADD and DEL through libcni,
a burst of pods ADDed at a given concurrency (wall time, p95 per ADD), ADD latency with 0 / 250 /
1,000 leases already held in the /16 (lease files created beforehand, right after the round-robin
cursor so that every ADD has to skip them), peak RSS of each exec (wait4 rusage) and of the daemon.
Results: a table on stdout and JSON in build/bench/latest.json (plus a timestamped copy).
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

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path("/usr/lib/cni")
CNITOOL = ROOT / "build" / "bin" / "pycni-cnitool"
OUT_DIR = ROOT / "build" / "bench"
SUBNET = ipaddress.ip_network("10.99.0.0/16")
MODES = ("go", "cold", "warm", "native")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# -- processes ----------------------------------------------------------------------------------------


class Run:
    __slots__ = ("maxrss_kib", "seconds", "status", "stderr", "stdout")

    def __init__(self, status: int, stdout: bytes, stderr: bytes, seconds: float, maxrss_kib: int) -> None:
        self.status, self.stdout, self.stderr, self.seconds, self.maxrss_kib = status, stdout, stderr, seconds, maxrss_kib


def execute(argv: list[str], env: dict[str, str], stdin: bytes = b"", timeout: float = 120) -> Run:
    """Exec `argv` the way a runtime does (env + stdin, read stdout/stderr), timed from spawn to reap;
    wait4 gives the child's peak RSS."""
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
    return Run(os.waitstatus_to_exitcode(wstatus), bytes(out), bytes(err), seconds, usage.ru_maxrss)


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
        self.bin_dir = REFERENCE if name == "go" else bin_dir
        self.nss = nss
        self.args = args
        self.node = nss.create("node")
        self.node_fd = os.open(path_of(self.node), os.O_RDONLY | os.O_CLOEXEC)
        self.data_dir = self.tmp / "ipam"
        self.plugin = "bridge" if name == "go" else "pycni"
        self.ipam = "host-local" if name == "go" else "pycni-host-local"
        self.socket = self.tmp / "run" / "pycni.sock"  # only the warm mode starts a daemon there
        self.daemon: subprocess.Popen | None = None
        self.count = 0
        self.pods: list[str] = []
        self.rss: list[int] = []
        self.rss_add: list[int] = []  # KiB, wait4's ru_maxrss of each timed ADD exec
        self.results: dict[str, dict] = {}
        self.samples: dict[str, list[float]] = {}
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
        if self.name != "go":
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

    def record(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)

    # -- the daemon ---------------------------------------------------------------------------------

    def start_daemon(self) -> None:
        self.socket.parent.mkdir(mode=0o700)
        with open(self.tmp / "daemon.log", "wb") as log:
            self.daemon = subprocess.Popen([str(self.bin_dir / "pycni"), "daemon", "--socket", str(self.socket),
                                            "--cni-path", str(self.bin_dir)],
                                           stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        sel = selectors.DefaultSelector()
        assert self.daemon.stdout is not None
        sel.register(self.daemon.stdout, selectors.EVENT_READ)
        if not sel.select(60):
            raise RuntimeError("the pycni daemon did not become ready in 60 s")
        line = self.daemon.stdout.readline().decode().strip()
        sel.close()
        if not line.startswith("ready"):
            raise RuntimeError(f"the pycni daemon failed to start: {line!r}, see {self.tmp / 'daemon.log'}")

    def daemon_memory(self) -> dict:
        if self.daemon is None:
            return {}
        out = {}
        with open(f"/proc/{self.daemon.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0])
        return out

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.kill(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait()
        if self.daemon is not None and self.daemon.stdout is not None:
            self.daemon.stdout.close()

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
            add = self.plugin_run("ADD", conf, cid, netns)
            check_conf = dict(conf, prevResult=json.loads(add.stdout))
            check = self.plugin_run("CHECK", check_conf, cid, netns)
            delete = self.plugin_run("DEL", conf, cid, netns)
            if i >= warmup:
                self.record("ADD", add.seconds)
                self.record("CHECK", check.seconds)
                self.record("DEL", delete.seconds)
                self.record("ADD+DEL", add.seconds + delete.seconds)
                self.rss_add.append(add.maxrss_kib)

    def simple(self, rounds: int) -> None:
        for _ in range(rounds):
            self.record("VERSION", self.plugin_run("VERSION", {"cniVersion": "1.0.0"}).seconds)
        if self.name != "go":  # STATUS is CNI 1.1; Debian's reference plugins (1.1.1) predate it
            for _ in range(rounds):
                self.record("STATUS", self.plugin_run("STATUS", self.conf("1.1.0")).seconds)

    def libcni(self, rounds: int) -> None:
        if not CNITOOL.exists():
            return
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_PATH": str(self.bin_dir),
                "NETCONFPATH": str(self.conf_dir), "CNI_CACHE_DIR": str(self.tmp / "cache")}
        if self.name != "go":
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
                    self.record(f"ADD, {n} leases held", add.seconds)
        for path in made:
            path.unlink()

    def burst(self, pods: int, concurrency: int) -> None:
        conf = self.conf()
        spaces = [path_of(self.nss.create("burst")) for _ in range(pods)]
        cids = [self.cid() for _ in spaces]

        def one(command: str, i: int) -> Run:
            return self.plugin_run(command, conf, cids[i], spaces[i])

        for command in ("ADD", "DEL"):
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency, initializer=self.enter) as pool:
                runs = list(pool.map(lambda i, c=command: one(c, i), range(pods)))
            wall = time.perf_counter() - start
            self.results[f"burst {command}"] = {"pods": pods, "concurrency": concurrency, "wall_s": round(wall, 3),
                                                **{k: v for k, v in summary([r.seconds for r in runs]).items()}}
        for netns in spaces:
            self.nss.delete(Path(netns).name)

    def finish(self) -> None:
        for key, samples in self.samples.items():
            self.results[key] = summary(samples)
        if self.rss_add:
            self.results["peak RSS (ADD exec)"] = {"n": len(self.rss_add),
                                                   "p50_mb": round(pct(self.rss_add, 0.5) / 1024, 1),
                                                   "max_mb": round(max(self.rss_add) / 1024, 1)}
        if self.daemon is not None:
            mem = self.daemon_memory()
            self.results["daemon memory"] = {"rss_mb": round(mem.get("VmRSS", 0) / 1024, 1),
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


def table(report: dict) -> str:
    res = report["results"]
    lease_rows = sorted({k for m in MODES for k in res.get(m, {}) if k.startswith("ADD, ")},
                        key=lambda k: int(k.split()[1]))
    lines = []
    shown = [m for m in MODES if m in res]
    others = [m for m in shown if m != "go"]
    head = f"{'ms (p50 / p95)':<26}" + "".join(f"{m:>16}" for m in shown) + "".join(f"{m + '/go':>11}" for m in others)
    lines += [head, "-" * len(head)]

    def cell(m: str, key: str) -> str:
        r = res.get(m, {}).get(key)
        return f"{r['p50']:>7.1f} /{r['p95']:>6.1f}" if r else f"{'n/a':>14}"

    def ratio(m: str, key: str) -> str:
        a, b = res.get(m, {}).get(key), res.get("go", {}).get(key)
        return f"{a['p50'] / b['p50']:>10.2f}x" if a and b and b["p50"] else f"{'n/a':>11}"

    for key in ROWS + lease_rows:
        if not any(key in res.get(m, {}) for m in shown):
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
            + "".join(f"{res[m][key]['wall_s'] / res['go'][key]['wall_s']:>10.2f}x" if key in res.get(m, {})
                      and key in res.get("go", {}) else f"{'n/a':>11}" for m in others))
        lines.append(f"{'  per ' + verb + ' p50 / p95':<26}" + "".join(f"{cell(m, key):>16}" for m in shown)
                     + "".join(ratio(m, key) for m in others))
    rss = "peak RSS (ADD exec)"
    lines.append(f"{'peak RSS per ADD exec MB':<26}" + "".join(
        f"{res[m][rss]['max_mb']:>16.1f}" if rss in res.get(m, {}) else f"{'n/a':>16}" for m in shown))
    lines.append(f"{'daemon RSS / peak MB':<26}" + "".join(
        f"{res[m]['daemon memory']['rss_mb']:>9.1f} /{res[m]['daemon memory']['peak_mb']:>5.1f}"
        if "daemon memory" in res.get(m, {}) else f"{'':>16}" for m in shown))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few rounds, small burst")
    parser.add_argument("--install", action="store_true", help="with --quick: still use `make install` launchers")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 30, quick 3)")
    parser.add_argument("--burst", type=int, help="pods in the burst (default 100, quick 8)")
    parser.add_argument("--concurrency", type=int, help="parallel ADDs in the burst (default 10, quick 4)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of go,cold,warm")
    parser.add_argument("--json", type=Path, default=OUT_DIR / "latest.json", help="where to write the results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (not the namespaces)")
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

    load_before = os.getloadavg()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
    tag = uuid.uuid4().hex[:4]
    nss = Namespaces(tag)
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    active: list[Mode] = []
    report: dict = {"results": {}}
    try:
        bin_dir = install(tmp, args.quick and not args.install)
        native_dir = build_native(tmp, bin_dir) if "native" in modes else None
        if "native" in modes and native_dir is None:
            print("no C compiler: skipping the native mode", file=sys.stderr)
            modes.remove("native")
        for name in modes:
            mode = Mode(name, tmp, native_dir if name == "native" else bin_dir, nss, args)
            active.append(mode)
            mode.enter()
            try:
                if name in ("warm", "native"):
                    mode.start_daemon()
                print(f"[{name}] cycles", file=sys.stderr, flush=True)
                mode.cycles(rounds)
                mode.simple(rounds)
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
        "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
        + ("+dirty" if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                      capture_output=True, text=True, check=False).stdout.strip() else ""),
        "launchers": "venv" if args.quick and not args.install else "make install",
    }
    text = table(report)
    report["table"] = text.splitlines()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.json == OUT_DIR / "latest.json" and not args.quick:
        stamp = report["meta"]["date"].replace(":", "").replace("+0000", "Z")
        (OUT_DIR / f"bench-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    meta = report["meta"]
    print(f"pycni benchmark {meta['date']} ({meta['seconds']} s, {meta['cpus']} CPUs, load average "
          f"{meta['load_before'][0]} before / {meta['load_after'][0]} after, launchers: {meta['launchers']})")
    print(text)
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
