"""The exec'd plugin imports only what its verb needs (docs/performance.md), and the benchmark works.

Assertions are on what gets imported (`python -X importtime`, sys.modules), never on time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IS_ROOT

ROOT = Path(__file__).resolve().parent.parent


def imports_of(command: str, conf: dict | None, **env: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the bridge plugin cold (no daemon) under -X importtime; the set of modules it imported."""
    proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "PYCNI_NO_DAEMON": "1",
                **env}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "from pycni.cli import main_bridge; main_bridge()"],
                          input=json.dumps(conf).encode() if conf is not None else b"", env=proc_env,
                          capture_output=True, timeout=60, check=False)
    modules = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "import time:" in line}
    return proc, modules


def top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_version_imports_neither_pydantic_nor_pyroute2():
    proc, modules = imports_of("VERSION", {"cniVersion": "1.0.0"})
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.0.0"
    assert not top(modules) & {"pydantic", "pydantic_core", "pyroute2", "asyncio", "pycni.daemon"}, modules
    assert "pycni.spec.config" not in modules


def test_del_of_a_gone_netns_does_not_import_pyroute2(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "coldnet", "type": "pycni", "bridge": "cni0",
            "ipam": {"type": "pycni-host-local", "subnet": "10.78.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    proc, modules = imports_of("DEL", conf, CNI_CONTAINERID="gone-1", CNI_IFNAME="eth0", CNI_PATH="/nonexistent",
                               CNI_NETNS="/var/run/netns/pycnit-gone-for-good")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout == b""
    assert "pyroute2" not in top(modules), sorted(m for m in modules if m.startswith("pyroute2"))[:5]
    assert "pydantic" in top(modules)  # the configuration is validated: pydantic is needed here


# Run the plugin cold, then (atexit, after the verb) report what it left in sys.modules: a module
# without a spec (made by hand, not by the import system) or a stdlib/third-party module holding a
# function defined by pycni (a stand-in or a monkeypatch) is a patched private internal (issue 14).
AUDIT = """
import atexit, json, os, sys, types
def audit():
    bad = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("pycni") or name in ("__main__", "__mp_main__") or not isinstance(mod, types.ModuleType):
            continue
        if getattr(mod, "__spec__", None) is None:
            bad.append(name + ": not made by the import system")
        for attr, value in list(vars(mod).items()):
            if callable(value) and str(getattr(value, "__module__", None) or "").startswith("pycni"):
                bad.append(f"{name}.{attr} is pycni's {value.__module__}")
    pydantic_plugins = None
    if "pydantic" in sys.modules:
        from pydantic.plugin._loader import get_plugins
        pydantic_plugins = len(list(get_plugins()))
    os.write(2, ("AUDIT " + json.dumps({"bad": bad, "modules": sorted(sys.modules),
                                        "pydantic_plugins": pydantic_plugins,
                                        "env": os.environ.get("PYDANTIC_DISABLE_PLUGINS")}) + "\\n").encode())
atexit.register(audit)
from pycni.cli import main_bridge
main_bridge()
"""


def audited(command: str, conf: dict, node: str | None = None, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "PYCNI_NO_DAEMON": "1",
                **env}
    argv = [sys.executable, "-c", AUDIT]
    if node:
        argv = ["nsenter", f"--net=/var/run/netns/{node}", "--", *argv]
    proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=proc_env, capture_output=True, timeout=120,
                          check=False)
    lines = [line for line in proc.stderr.decode().splitlines() if line.startswith("AUDIT ")]
    assert lines, proc.stderr[-2000:]
    return proc, json.loads(lines[-1][6:])


def test_the_cold_path_patches_no_private_internal(tmp_path):
    """Issue 14: pydantic's plugins are off through its documented PYDANTIC_DISABLE_PLUGINS, not by a
    stand-in module for its private loader."""
    conf = {"cniVersion": "1.0.0", "name": "coldnet", "type": "pycni", "bridge": "cni0",
            "ipam": {"type": "pycni-host-local", "subnet": "10.78.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    env = {"CNI_CONTAINERID": "gone-1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
           "CNI_NETNS": "/var/run/netns/pycnit-gone-for-good"}
    proc, report = audited("DEL", conf, **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report["bad"] == []
    assert "pydantic.main" in report["modules"] and report["pydantic_plugins"] == 0
    assert report["env"] == "__all__"
    _, report = audited("DEL", conf, PYDANTIC_DISABLE_PLUGINS="someplugin", **env)
    assert report["env"] == "someplugin"  # the operator's own choice stands


def test_a_cold_add_patches_nothing_and_imports_what_coldpath_stages(netns, node, tmp_path):
    """A real cold ADD (and DEL) in a node namespace: pyroute2 is the package its own __init__ made,
    nothing in sys.modules is pycni's handiwork, and the modules bench/coldpath.py stages (to split
    the verb's CPU) are all imported by the verb itself."""
    pod = netns.create("pycnit-pod")
    conf = {"cniVersion": "1.0.0", "name": "coldnet", "type": "pycni", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "pycni-host-local", "subnet": "10.78.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    env = {"CNI_CONTAINERID": "cold-1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
           "CNI_NETNS": netns.path(pod),
           "PYCNI_NO_DAEMON": "", "PYCNI_SOCKET": str(tmp_path / "no-daemon.sock")}  # as a runtime runs it: no daemon
    staged = {"pycni.cli", "pycni.daemon.client", "pydantic.main", "importlib.metadata", "pycni.spec.config",
              "pycni.spec.result", "pycni.bridge.verbs", "pycni.bridge.config", "pycni.ipam.verbs", "pycni.ipam.config",
              "pyroute2"}
    for verb in ("ADD", "DEL"):
        proc, report = audited(verb, conf, node=node, **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
        assert report["bad"] == [], (verb, report["bad"])
        assert staged <= set(report["modules"]), staged - set(report["modules"])


def test_no_module_of_pycni_writes_sys_modules_or_imports_a_private_module():
    """The source itself: no sys.modules entries made by hand, no module objects built by hand, no
    private (underscore) module of CPython or of a dependency. `_socket` is the one exception: the
    C socket type that `socket.socket` subclasses (the Python shim skips `socket`'s enums)."""
    import ast

    allowed = {"_socket"}
    found = []
    for path in sorted((ROOT / "src" / "pycni").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name not in allowed and any(part.startswith("_") and part != "__future__" for part in name.split(".")):
                    found.append(f"{where}: imports {name}")
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "sys.modules" and isinstance(
                    getattr(node, "ctx", None), (ast.Store, ast.Del)):
                found.append(f"{where}: writes sys.modules")
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("ModuleType"):
                found.append(f"{where}: builds a module object")
    assert found == []


def test_a_daemon_handoff_is_not_even_tried_when_disabled():
    _, modules = imports_of("VERSION", {"cniVersion": "1.0.0"})
    assert "pycni.daemon.client" not in modules


def test_the_shim_reads_what_the_spec_layer_accepts():
    from pycni import cli
    from pycni.spec import env

    assert cli.MAX_STDIN == env.MAX_CONFIG_BYTES


@pytest.mark.skipif(not IS_ROOT, reason="needs root and network namespaces")
def test_benchmark_quick_run(tmp_path):
    """bench/bench.py --quick runs every mode end to end, records the machine, CPU times and the
    targets, and leaves nothing behind (no namespace, no cgroup; no timing checks)."""
    if not (ROOT / "build" / "ref" / "bridge").exists():
        pytest.fail("build/ref/bridge is missing: `make build` builds the Go reference (make test runs it first)")
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--rounds", "2", "--burst", "4",
                           "--concurrency", "2", "--json", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode in ("go", "cold", "warm"):
        rows = report["results"][mode]
        for key in ("ADD", "CHECK", "DEL", "VERSION", "STATUS", "ADD, 0 leases held", "ADD, 1000 leases held",
                    "burst ADD"):
            assert key in rows, (mode, key)
        assert rows["ADD"]["cpu"]["p50"] > 0 and rows["burst ADD"]["cpu_per_pod_ms"] > 0
    assert report["results"]["warm"]["daemon ADD"]["cpu"]["n"] == 2  # the daemon's CPU, per ADD
    assert "daemon ADD" not in report["results"]["cold"]
    if "go-debian" in report["results"]:  # Debian's 1.1.1 predates STATUS
        assert "STATUS" not in report["results"]["go-debian"] and "ADD" in report["results"]["go-debian"]
    assert report["results"]["warm"]["daemon memory"]["pss_mb"] > 0
    machine = report["meta"]["machine"]
    assert machine["cpus"] == os.cpu_count() and machine["cpu_model"] and machine["kernel"]
    assert machine["python"]["executable"] and "shared_libpython" in machine["python"]
    assert len(report["meta"]["load_before"]) == 3 and len(report["meta"]["load_after"]) == 3
    names = {t["target"] for t in report["targets"]}
    assert {"cold ADD vs go", "warm ADD+DEL vs go", "warm burst ADD wall vs go", "warm daemon CPU per ADD",
            "warm ADD at 1000 leases vs 0"} <= names
    assert "ADD" in proc.stdout and "warm/go" in proc.stdout and "CPU ms of one exec" in proc.stdout
    assert "machine:" in out.with_suffix(".md").read_text()
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    tag = report["meta"]["tag"]
    assert not {n for n in after - before if n.startswith(f"pycnib-{tag}-")}, "the benchmark left namespaces behind"
    for parent in (Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup")):
        if parent.is_dir():
            assert not [p.name for p in parent.iterdir() if p.name.startswith(f"pycni-bench-{tag}-")], "a cgroup was left"


def test_the_daemons_lease_view_sees_every_change(tmp_path):
    """store.LeaseCache: leases come from memory, kept current by inotify - including changes
    made behind the process's back (another plugin, the reference host-local, an operator)."""
    import shutil

    from pycni.ipam import allocator, store
    from pycni.ipam.ranges import Range, RangeSet

    cache = store.LeaseCache()
    rs = RangeSet.build([Range.build("10.99.0.0/24")], where="t")
    net = tmp_path / "net"
    net.mkdir()

    def owners() -> dict[str, str | None]:
        with store.DiskStore(str(tmp_path), "net", cache=cache) as st:
            return {str(lease.ip): lease.container_id for lease in st.leases()}

    with store.DiskStore(str(tmp_path), "net", cache=cache) as st:
        ip = allocator.allocate([rs], [], st, "c1", "eth0")[0].address
    assert owners() == {"10.99.0.2": "c1"} and ip == "10.99.0.2/24"
    assert cache.watches, "no inotify watch was set up"
    (net / "10.99.0.9").write_text("foreign\r\neth0")  # a lease written by someone else
    (net / "10.99.0.2").unlink()
    (net / "10.99.0.2").write_text("c2\r\neth0")  # released and taken again by another container
    assert owners() == {"10.99.0.2": "c2", "10.99.0.9": "foreign"}
    (net / "10.99.0.9").write_text("")  # a crashed writer's empty file: reclaimed by the next ADD
    with store.DiskStore(str(tmp_path), "net", cache=cache) as st:
        allocator.allocate([rs], [], st, "c3", "eth0")
    assert owners() == {"10.99.0.2": "c2", "10.99.0.3": "c3"}
    shutil.rmtree(net)  # the directory replaced: the watch dies, the next open rescans
    net.mkdir()
    (net / "10.99.0.7").write_text("c7\r\neth0")
    assert owners() == {"10.99.0.7": "c7"}
    cache.close()


def test_the_lease_cache_keeps_held_addresses_and_temporaries_in_step(tmp_path):
    """What the allocator skips (store.held) and what the sweep removes (store.temporaries) come from the
    cache's indexes, not from a walk over the directory: they must follow every change, ours or not."""
    import ipaddress

    from pycni.ipam import store

    cache = store.LeaseCache()
    net = tmp_path / "net"
    net.mkdir()

    def view() -> tuple[set[str], list[str]]:
        with store.DiskStore(str(tmp_path), "net", cache=cache) as st:
            held = {str(ipaddress.ip_address(v)) for v in st.held(4)}
            assert held == {str(lease.ip) for lease in st.leases() if not lease.empty}  # same as a full read
            return held, st.temporaries()

    (net / "10.99.0.2").write_text("a\r\neth0")
    (net / "10.99.0.3").write_text("b\r\neth0")
    assert view() == ({"10.99.0.2", "10.99.0.3"}, [])
    (net / "10.99.0.3").unlink()
    (net / "10.99.0.4").write_text("")  # empty: not held (ADD reclaims it)
    assert view() == ({"10.99.0.2"}, [])
    (net / "10.99.0.4").write_text("c\r\neth0")  # written later: held now
    (net / f"{store.TMP_PREFIX}99-x").write_text("x")  # a dead writer's temporary: swept at the next open
    assert view()[0] == {"10.99.0.2", "10.99.0.4"}
    assert not (net / f"{store.TMP_PREFIX}99-x").exists() and view()[1] == []
    cache.close()


def _inotify_fds() -> dict[int, int]:
    """This process's inotify instances: fd -> how many watches the kernel holds for it."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                out[int(fd)] = sum(line.startswith("inotify wd:") for line in fh)
        except OSError:
            continue
    return out


def test_one_inotify_instance_and_bounded_watches(tmp_path):
    """Issue 15: one inotify instance per network directory leaked (root's limit of 128 instances is
    shared with containerd and the kubelet). Now: one instance for the process, at most MAX_WATCHES
    watches, and a removed directory's watch is gone (the kernel drops it, the view forgets it)."""
    import shutil

    from pycni.ipam import allocator, store
    from pycni.ipam.ranges import Range, RangeSet

    cache = store.LeaseCache(max_watches=20)
    before = _inotify_fds()
    rs = RangeSet.build([Range.build("10.99.0.0/24")], where="t")
    try:
        for n in range(30):
            with store.DiskStore(str(tmp_path), f"net{n}", cache=cache) as st:
                allocator.allocate([rs], [], st, "c1", "eth0")
                allocator.release(st, "c1", "eth0")
        mine = {fd: w for fd, w in _inotify_fds().items() if fd not in before}
        assert list(mine) == [cache.fd], mine  # one instance, not one per directory
        assert mine[cache.fd] == 20 == len(cache.watches)  # bounded: the oldest gave theirs back
        for n in range(30):
            shutil.rmtree(tmp_path / f"net{n}")
        assert _inotify_fds()[cache.fd] == 0  # released by the kernel when the directories went
        with store.DiskStore(str(tmp_path), "other", cache=cache) as st:
            st.leases()
        assert list(cache.watches) == [str(tmp_path / "other")]  # the view forgot the removed ones
    finally:
        cache.close()
    assert _inotify_fds().keys() == before.keys()  # close() gives the instance back
