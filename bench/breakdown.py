#!/usr/bin/env python3
"""What each optimisation of docs/performance.md buys, measured one at a time on this machine.

    sudo .venv/bin/python bench/breakdown.py [--before 7a0725c] [--rounds 30]

  1. exec'd cold ADD / DEL / VERSION: the source at --before (git archive) against the working tree,
     both run by this venv's interpreter in a node namespace created here (no daemon for either);
  2. imports: pyroute2's rtnetlink client with and without its package __init__, pydantic's plugin
     scan on and off (each in a fresh interpreter);
  3. ADD in-process (what the daemon does per request): link lookups through pyroute2 vs raw rtnetlink;
  4. the lease store with 0 / 250 / 1,000 leases held: reading every lease (exec'd) vs the daemon's
     fallback stat cache vs its inotify view, allocator walk included;
  5. interpreter start of the shim: `python -I`, `python -IS`, the native shim (VERSION through a daemon).
Everything runs in namespaces and directories created here and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def p50(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def timed(argv: list[str], env: dict, stdin: bytes = b"", n: int = 20) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
        out.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} failed: {proc.stdout[-500:]!r} {proc.stderr[-1500:]!r}")
    return p50(out)


def in_fresh(code: str, n: int = 7) -> float:
    """Median of what `code` prints (a duration in seconds), each run in a fresh interpreter."""
    vals = []
    for _ in range(n):
        out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
        vals.append(float(out.strip().splitlines()[-1]))
    return p50(vals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="7a0725c", help="git revision to compare against (default: before issue 7)")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    n = args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="pycni-breakdown-"))
    tag = uuid.uuid4().hex[:6]
    node, pod = f"pycnib-{tag}-node", f"pycnib-{tag}-pod"
    daemon = None
    report: dict = {"load_before": os.getloadavg()[0]}
    try:
        for ns in (node, pod):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        before = tmp / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)

        # 1. exec'd cold verbs, before vs after
        def plugin(src: Path) -> list[str]:
            code = f"import sys; sys.path.insert(0, {str(src)!r}); from pycni.cli import main_bridge; main_bridge()"
            return ["nsenter", f"--net=/var/run/netns/{node}", "--", PY, "-I", "-c", code]

        conf = {"cniVersion": "1.0.0", "name": "bd", "type": "pycni", "bridge": "cni0", "isGateway": True,
                "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.98.0.0/16"}]],
                         "dataDir": str(tmp / "ipam")}}
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_PATH": "/usr/lib/cni", "CNI_IFNAME": "eth0",
                "CNI_NETNS": f"/var/run/netns/{pod}", "PYCNI_SOCKET": str(tmp / "no-daemon.sock")}
        cold = {}
        for label, src in (("before", before / "src"), ("after", ROOT / "src")):
            adds, dels = [], []
            for i in range(n):
                env = dict(base, CNI_CONTAINERID=f"bd-{label}-{i}")
                for verb, acc in (("ADD", adds), ("DEL", dels)):
                    t = time.perf_counter()
                    proc = subprocess.run(plugin(src), input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND=verb),
                                          capture_output=True, check=False)
                    acc.append(time.perf_counter() - t)
                    assert proc.returncode == 0, proc.stdout + proc.stderr[-1000:]
            version = timed(plugin(src), dict(base, CNI_COMMAND="VERSION"), b'{"cniVersion":"1.0.0"}', n)
            cold[label] = {"ADD": p50(adds[2:]), "DEL": p50(dels[2:]), "VERSION": version}
        report["cold exec'd (ms p50)"] = cold

        # 2. imports
        lean = ("import time, sys; t=time.perf_counter(); from pycni.bridge import netlink; netlink._lean_pyroute2(); "
                "from pyroute2.iproute.linux import IPRoute; print(time.perf_counter()-t)")
        full = ("import time, sys; t=time.perf_counter(); from pycni.bridge import netlink; "
                "from pyroute2 import IPRoute; print(time.perf_counter()-t)")
        models = ("import time, sys, types; {stub}t=time.perf_counter(); import pycni.bridge.verbs, pycni.bridge.config, "
                  "pycni.ipam.verbs; print(time.perf_counter()-t)")
        stub = ("m=types.ModuleType('pydantic.plugin._loader'); m.get_plugins=lambda: (); "
                "sys.modules['pydantic.plugin._loader']=m; ")
        report["imports (ms p50)"] = {
            "pyroute2 (package __init__)": in_fresh(full), "pyroute2 (rtnetlink client only)": in_fresh(lean),
            "pydantic + models (plugin scan)": in_fresh(models.format(stub="")),
            "pydantic + models (no plugin scan)": in_fresh(models.format(stub=stub)),
        }

        # 3. ADD in-process: pyroute2 link lookups vs raw rtnetlink
        code = f"""
import io, json, sys, time, statistics
from pycni import cli
import errno
from pycni.bridge import links, netlink
from pycni.daemon import server
server.preload()
conf = json.loads(sys.argv[1]); data = json.dumps(conf).encode()
out = {{}}

def pyroute2_get_link(name, pod=None):  # the lookup links.get_link replaced: pyroute2 decodes everything
    ipr = pod.ipr if pod is not None else netlink.node()
    try:
        msgs = ipr.link("get", ifname=name)
    except netlink.errors() as exc:
        if netlink.error_code(exc) in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return netlink.link_from_msg(msgs[0]) if msgs else None

for label in ("pyroute2", "raw"):
    if label == "pyroute2":
        saved, links.get_link = links.get_link, pyroute2_get_link
    else:
        links.get_link = saved
    ts = []
    for i in range(22):
        env = {{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"ip-{{label}}-{{i}}", "CNI_NETNS": "/var/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}}
        t = time.perf_counter(); rc, text = cli.run("pycni", env, data, stderr=io.StringIO()); ts.append(time.perf_counter() - t)
        assert rc == 0, text
        server._close_thread_sockets()
        rc, text = cli.run("pycni", dict(env, CNI_COMMAND="DEL"), data, stderr=io.StringIO())
        server._close_thread_sockets()
    out[label] = round(statistics.median(ts[2:]) * 1000, 1)
print(json.dumps(out))
"""
        proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{node}", "--", PY, "-c", code, json.dumps(conf)],
                              capture_output=True, text=True, check=True)
        report["ADD in-process, link lookups (ms p50)"] = json.loads(proc.stdout.strip().splitlines()[-1])

        # 4. the lease store
        code = f"""
import ipaddress, json, os, statistics, time
from pycni.ipam import allocator, store
from pycni.ipam.ranges import Range, RangeSet
d = {str(tmp / "leases")!r}; os.makedirs(d + "/net")
rs = RangeSet.build([Range.build("10.99.0.0/16")], where="x")
first = ipaddress.ip_address("10.99.0.2")
real_watch = store._Watch

class NoInotify:
    def __init__(self, *a):
        raise OSError("disabled")

out = {{}}
for n in (0, 250, 1000):
    for k in range(n):
        path = f"{{d}}/net/{{first + k}}"
        if not os.path.exists(path):
            open(path, "w").write(f"filler-{{k}}\\r\\neth0")
    row = {{}}
    for label, cache, watch in (("exec'd: read every lease", False, real_watch),
                                ("daemon, stat cache (no inotify)", True, NoInotify),
                                ("daemon, inotify view", True, real_watch)):
        store._cache_enabled, store._Watch = cache, watch
        store._seen.clear(); store._watches.clear()
        ts = []
        for i in range(25):
            open(f"{{d}}/net/last_reserved_ip.0", "w").write("10.99.0.1")
            t = time.perf_counter()
            with store.DiskStore(d, "net") as st:
                allocator.allocate([rs], [], st, f"c{{i}}", "eth0")
                allocator.release(st, f"c{{i}}", "eth0")
            ts.append(time.perf_counter() - t)
        row[label] = round(statistics.median(ts[1:]) * 1000, 2)
    out[str(n)] = row
print(json.dumps(out))
"""
        proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
        report["IPAM open+allocate+release, leases held (ms p50)"] = json.loads(proc.stdout.strip().splitlines()[-1])

        # 5. the shim's start: python -I, python -IS, native (VERSION answered by a daemon)
        sock_dir = tmp / "run"
        sock_dir.mkdir(mode=0o700)
        sock = sock_dir / "pycni.sock"
        daemon = subprocess.Popen([PY, "-c", "from pycni.cli import main_bridge; main_bridge()", "daemon", "--socket",
                                   str(sock)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert daemon.stdout is not None and daemon.stdout.readline().startswith(b"ready")
        launchers = tmp / "bin"
        launchers.mkdir()
        (launchers / "py-I").write_text(f"#!{PY} -I\nfrom pycni.cli import main_bridge\nmain_bridge()\n")
        (launchers / "py-IS").write_text(
            f"#!{PY} -IS\nimport sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
            "from pycni.cli import main_bridge\nmain_bridge()\n")
        for f in ("py-I", "py-IS"):
            (launchers / f).chmod(0o755)
        row = {}
        if shutil.which("cc"):
            subprocess.run(["bash", str(ROOT / "integration/shim/build.sh"), str(launchers / "pycni"), PY], check=True)
        env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION", "PYCNI_SOCKET": str(sock)}
        for label, exe in (("python -I (make install)", "py-I"), ("python -IS", "py-IS"), ("native shim", "pycni")):
            if (launchers / exe).exists():
                row[label] = timed([str(launchers / exe)], env, b'{"cniVersion":"1.0.0"}', n * 2)
        row["Go bridge (no daemon, for scale)"] = timed(["/usr/lib/cni/bridge"], env, b'{"cniVersion":"1.0.0"}', n * 2)
        report["VERSION via the daemon (ms p50)"] = row
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=30)
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
