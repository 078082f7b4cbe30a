#!/usr/bin/env python3
"""The daemon's own CPU time per request (issue 13): what `pycni daemon` spends on one ADD and one DEL,
at 0 and 1,000 leases held, and how a burst spreads over the CPUs - in CPU time, so that a loaded
machine gives the same answer as a quiet one.

    sudo .venv/bin/python bench/daemon_cpu.py [--rounds 50] [--leases 0,1000] [--workers N]
                                             [--burst 100 --concurrency 10] [--profile OUT.pstats]

Runs in a node namespace and pod namespaces created here (all deleted at the end); the daemon is started
here (stopped by its PID) and requests are sent with pycni's own client, in-process, so the only CPU
counted is the daemon's: utime + stime of the daemon and every process under it (worker processes and
exec'd delegates included), read from /proc before and after each batch of requests. `--profile` runs
the daemon under cProfile (every process that serves requests dumps its own statistics; they are
merged into OUT.pstats) and prints the top entries by cumulative and own time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import ipaddress
import json
import os
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
SUBNET = ipaddress.ip_network("10.98.0.0/16")
CLONE_NEWNET = 0x40000000
TICK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)

# Run as the daemon with --serve-profiled: every process that runs requests profiles them.
PROFILED = """
import cProfile, os, sys, time
out = sys.argv[1]
prof = cProfile.Profile(time.thread_time)
from pycni import runner
from pycni.daemon import server
run = runner.run
def profiled(*args, **kwargs):  # in the worker processes; requests are sent one at a time when profiling
    prof.enable()
    try:
        return run(*args, **kwargs)
    finally:
        prof.disable()
        prof.dump_stats(f"{out}.{os.getpid()}")
runner.run = profiled
import threading, pstats
main_lock, main_stats = threading.Lock(), []
handle = server.Server._handle
def profiled_handle(*args, **kwargs):  # the main process's share: one profile per connection, merged
    p = cProfile.Profile(time.thread_time)
    p.enable()
    try:
        return handle(*args, **kwargs)
    finally:
        p.disable()
        with main_lock:
            if main_stats:
                main_stats[0].add(p)
            else:
                main_stats.append(pstats.Stats(p))
            main_stats[0].dump_stats(f"{out}-main")
server.Server._handle = profiled_handle
sys.argv[1:] = sys.argv[2:]
sys.exit(server.main(sys.argv[1:]))
"""


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def tree(pid: int) -> list[int]:
    """pid and every live descendant."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def stop_daemon(daemon: subprocess.Popen | None) -> None:
    """SIGTERM the daemon we started (it stops its workers itself) and wait; SIGKILL after 30 s."""
    if daemon is not None and daemon.poll() is None:
        os.kill(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()


def _process_clock(pid: int) -> int:
    """The CPU-time clock of a whole process (all its threads, exited ones included): clock_getcpuclockid(3)
    computes this id, Python does not expose it (MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED))."""
    return ((~pid) << 3) | 2


def cpu(pid: int, only: bool = False) -> tuple[float, float, float]:
    """(user, system, on-CPU) seconds of the daemon's process tree (`only`: of its main process): user
    and system from /proc/<pid>/stat (clock ticks: coarse), on-CPU from each process's CPU-time clock
    (nanoseconds, every thread of the process)."""
    user = system = oncpu = 0.0
    for p in [pid] if only else tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            oncpu += time.clock_gettime(_process_clock(p))
        except OSError:
            continue
        # fields[11..14] = utime stime cutime cstime (stat(5) fields 14-17, counted after the comm)
        user += (int(fields[11]) + int(fields[13])) / TICK
        system += (int(fields[12]) + int(fields[14])) / TICK
    return user, system, oncpu


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix="pycni-dcpu-"))
        self.nss: list[str] = []
        self.daemon: subprocess.Popen | None = None
        self.socket = self.tmp / "run" / "pycni.sock"
        self.data_dir = self.tmp / "ipam"
        self.bin_dir = self.tmp / "bin"
        self.bin_dir.mkdir()
        self.count = 0
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def netns(self, kind: str) -> str:
        name = f"pycnid-{self.tag}-{kind}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.nss.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def conf(self, network: str = "dcpu") -> dict:
        return {"cniVersion": "1.0.0", "name": network, "type": "pycni", "bridge": "cni0", "isGateway": True,
                "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": str(SUBNET)}]],
                         "dataDir": str(self.data_dir)}}

    def env(self, command: str, cid: str, netns: str) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
                "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin_dir),
                "PYCNI_SOCKET": str(self.socket)}

    def start(self) -> None:
        node = self.netns("node")
        fd = os.open(f"/var/run/netns/{node}", os.O_RDONLY | os.O_CLOEXEC)
        setns(fd)  # this process (single-threaded so far) and the daemon it starts live in the node
        os.close(fd)
        self.socket.parent.mkdir(mode=0o700)
        argv = [sys.executable]
        if self.args.profile:
            argv += ["-c", PROFILED, str(self.tmp / "prof")]
        else:
            argv += ["-c", "import sys; from pycni.daemon import server; sys.exit(server.main(sys.argv[1:]))"]
        argv += ["--socket", str(self.socket), "--cni-path", str(self.bin_dir), "--log-level", "WARNING"]
        if self.args.workers:
            argv += ["--workers", str(self.args.workers)]
        self.log = open(self.tmp / "daemon.log", "wb")  # noqa: SIM115
        self.daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        sel = selectors.DefaultSelector()
        assert self.daemon.stdout is not None
        sel.register(self.daemon.stdout, selectors.EVENT_READ)
        if not sel.select(60) or not self.daemon.stdout.readline().startswith(b"ready"):
            raise RuntimeError(f"daemon did not start: {(self.tmp / 'daemon.log').read_text()[-2000:]}")
        sel.close()
        from pycni.daemon import client

        self.client = client
        self.pods = [f"/var/run/netns/{self.netns('pod')}" for _ in range(4)]

    def call(self, command: str, cid: str, netns: str, network: str = "dcpu") -> str:
        answer = self.client.call("pycni", self.env(command, cid, netns), json.dumps(self.conf(network)).encode())
        if answer is None or answer[0] != 0:
            raise RuntimeError(f"{command} {cid}: {answer}")
        return answer[1]

    def cid(self) -> str:
        self.count += 1
        return f"dcpu-{self.count:05d}-{uuid.uuid4().hex[:8]}"

    def per_request(self, held: int) -> dict:
        """CPU ms per ADD and per DEL with `held` leases right after the cursor (each ADD skips them)."""
        net_dir = self.data_dir / "dcpu"
        first = SUBNET.network_address + 2
        made = []
        net_dir.mkdir(parents=True, exist_ok=True)
        while len(made) < held:
            path = net_dir / str(first + len(made))
            path.write_text(f"dcpu-filler-{len(made):05d}\r\neth0")
            made.append(path)
        add_cpu, del_cpu = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        rounds = self.args.rounds
        main = 0.0
        for i in range(rounds + 3):  # 3 to warm up
            if i == 3:
                main = cpu(self.daemon.pid, only=True)[2]
            (net_dir / "last_reserved_ip.0").write_text(str(SUBNET.network_address + 1))
            netns, cid = self.pods[i % len(self.pods)], self.cid()
            before = cpu(self.daemon.pid)
            ip = json.loads(self.call("ADD", cid, netns))["ips"][0]["address"].split("/")[0]
            middle = cpu(self.daemon.pid)
            assert ipaddress.ip_address(ip) == first + held, (ip, held)
            self.call("DEL", cid, netns)
            after = cpu(self.daemon.pid)
            if i >= 3:
                for k in (0, 1, 2):
                    add_cpu[k] += middle[k] - before[k]
                    del_cpu[k] += after[k] - middle[k]
        main = cpu(self.daemon.pid, only=True)[2] - main
        for path in made:
            path.unlink()
        return {f"ADD {held} leases": _ms(add_cpu, rounds), f"DEL {held} leases": _ms(del_cpu, rounds),
                f"main process per ADD+DEL {held} leases, ms": round(main * 1000 / rounds, 2)}

    def interleaved(self, held: int) -> dict:
        """CPU ms per ADD on two networks of the same bridge, one with `held` leases right after its cursor
        and one with none, ADDs alternating between them: load and noise hit both alike."""
        first = SUBNET.network_address + 2
        nets = {0: "dcpu-empty", held: "dcpu-held"}
        for n, name in nets.items():
            (self.data_dir / name).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                (self.data_dir / name / str(first + k)).write_text(f"dcpu-filler-{k:05d}\r\neth0")
        used = {n: 0.0 for n in nets}
        for i in range(self.args.rounds + 3):
            for n, name in nets.items():
                (self.data_dir / name / "last_reserved_ip.0").write_text(str(SUBNET.network_address + 1))
                netns, cid = self.pods[i % len(self.pods)], self.cid()
                before = cpu(self.daemon.pid)[2]
                ip = json.loads(self.call("ADD", cid, netns, name))["ips"][0]["address"].split("/")[0]
                if i >= 3:
                    used[n] += cpu(self.daemon.pid)[2] - before
                assert ipaddress.ip_address(ip) == first + n, (ip, n)
                self.call("DEL", cid, netns, name)
        out = {f"ADD interleaved, {n} leases: cpu_ms": round(v * 1000 / self.args.rounds, 2) for n, v in used.items()}
        out[f"ADD interleaved: {held} leases vs 0"] = f"{(used[held] / used[0] - 1) * 100:+.1f} %"
        return out

    def burst(self, pods: int, concurrency: int) -> dict:
        spaces = [f"/var/run/netns/{self.netns('burst')}" for _ in range(pods)]
        cids = [self.cid() for _ in spaces]
        out = {}
        for command in ("ADD", "DEL"):
            before, t0 = cpu(self.daemon.pid), time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda i, c=command: self.call(c, cids[i], spaces[i]), range(pods)))
            wall = time.perf_counter() - t0
            after = cpu(self.daemon.pid)
            used = [a - b for a, b in zip(after, before, strict=True)]
            out[f"burst {command} {pods}@{concurrency}"] = {
                "wall_s": round(wall, 2), **_ms(used, pods), "cpus_busy": round(used[2] / wall, 2)}
        for name in [n for n in self.nss if "-burst-" in n]:
            subprocess.run(["ip", "netns", "del", name], check=False)
            self.nss.remove(name)
        return out

    def memory(self) -> dict:
        """Resident memory of each process of the daemon: RSS and PSS (shared pages split between the
        processes that map them - what they cost together), MB."""
        out = {}
        for p in tree(self.daemon.pid):
            fields = {}
            try:
                with open(f"/proc/{p}/smaps_rollup") as fh:
                    for line in fh:
                        key, _, value = line.partition(":")
                        if key in ("Rss", "Pss"):
                            fields[key.lower() + "_mb"] = round(int(value.split()[0]) / 1024, 1)
            except OSError:
                continue
            out[str(p)] = fields
        out["pss_total_mb"] = round(sum(v["pss_mb"] for v in out.values() if isinstance(v, dict)), 1)
        return out

    def stop(self) -> None:
        stop_daemon(self.daemon)

    def cleanup(self) -> None:
        self.stop()
        log = (self.tmp / "daemon.log").read_text(errors="replace") if (self.tmp / "daemon.log").exists() else ""
        if "ERROR" in log or "Traceback" in log:
            print(f"the daemon logged errors:\n{log[-3000:]}", file=sys.stderr)
        setns(self.home)
        for name in reversed(self.nss):
            subprocess.run(["ip", "netns", "del", name], check=False)
        if self.args.profile:
            self.merge_profiles()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def merge_profiles(self) -> None:
        import pstats

        if (self.tmp / "prof-main").exists():
            print("== the main process (connections), per connection thread")
            pstats.Stats(str(self.tmp / "prof-main")).sort_stats("cumulative").print_stats(30)
        files = sorted(str(p) for p in self.tmp.glob("prof.*"))
        if not files:
            print("no profile written", file=sys.stderr)
            return
        stats = pstats.Stats(*files)
        stats.dump_stats(self.args.profile)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(35)


def _ms(used: list[float], n: int) -> dict:
    """Per request: on-CPU ms (precise), and its user/system split (clock ticks: coarse)."""
    return {"cpu_ms": round(used[2] * 1000 / n, 2), "user_ms": round(used[0] * 1000 / n, 2),
            "sys_ms": round(used[1] * 1000 / n, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--leases", default="0,1000")
    ap.add_argument("--workers", type=int, default=0, help="the daemon's --workers (default: its own)")
    ap.add_argument("--burst", type=int, default=0, help="pods in a burst (0: none)")
    ap.add_argument("--interleave", type=int, default=0,
                    help="also ADD alternately on a network with this many leases and one with none")
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--profile", help="write merged cProfile statistics of the daemon here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    bench = Bench(args)
    report: dict = {"load_before": os.getloadavg()[0]}
    try:
        bench.start()
        for held in (int(x) for x in args.leases.split(",") if x):
            report.update(bench.per_request(held))
        if args.interleave:
            report.update(bench.interleaved(args.interleave))
        if args.burst:
            report.update(bench.burst(args.burst, args.concurrency))
        report["memory"] = bench.memory()
    finally:
        report["load_after"] = os.getloadavg()[0]
        bench.cleanup()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
