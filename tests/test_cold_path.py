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
    assert "importlib.metadata" not in modules  # pydantic's plugin scan is skipped on the cold path


def test_a_daemon_handoff_is_not_even_tried_when_disabled():
    _, modules = imports_of("VERSION", {"cniVersion": "1.0.0"})
    assert "pycni.daemon.client" not in modules


def test_the_shim_reads_what_the_spec_layer_accepts():
    from pycni import cli
    from pycni.spec import env

    assert cli.MAX_STDIN == env.MAX_CONFIG_BYTES


def test_lean_pyroute2_still_gives_the_whole_package_on_demand():
    code = (
        "import sys\n"
        "from pycni.bridge import netlink\n"
        "netlink._lean_pyroute2()\n"
        "from pyroute2.iproute.linux import IPRoute\n"
        "assert 'pyroute2.ndb.main' not in sys.modules, 'the package __init__ ran'\n"
        "import pyroute2\n"
        "from pyroute2 import IPRoute as Again, NDB\n"
        "assert Again is IPRoute and NDB.__name__ == 'NDB' and pyroute2.__version__\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.skipif(not IS_ROOT, reason="needs root and network namespaces")
def test_benchmark_quick_run(tmp_path):
    """bench/bench.py --quick runs every mode end to end and leaves nothing behind (no timing checks)."""
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--rounds", "2", "--burst", "4",
                           "--concurrency", "2", "--json", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode in ("go", "cold", "warm"):
        rows = report["results"][mode]
        for key in ("ADD", "CHECK", "DEL", "VERSION", "ADD, 0 leases held", "ADD, 1000 leases held", "burst ADD"):
            assert key in rows, (mode, key)
    assert "STATUS" not in report["results"]["go"] and "STATUS" in report["results"]["warm"]
    assert report["results"]["warm"]["daemon memory"]["rss_mb"] > 0
    assert "ADD" in proc.stdout and "warm/go" in proc.stdout
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    assert not {n for n in after - before if n.startswith("pycnib-")}, "the benchmark left namespaces behind"


def test_the_daemons_lease_view_sees_every_change(tmp_path, monkeypatch):
    """store.enable_cache(): leases come from memory, kept current by inotify - including changes
    made behind the process's back (another plugin, the reference host-local, an operator)."""
    import shutil

    from pycni.ipam import allocator, store
    from pycni.ipam.ranges import Range, RangeSet

    monkeypatch.setattr(store, "_cache_enabled", True)
    monkeypatch.setattr(store, "_watches", {})
    rs = RangeSet.build([Range.build("10.99.0.0/24")], where="t")
    net = tmp_path / "net"
    net.mkdir()

    def owners() -> dict[str, str | None]:
        with store.DiskStore(str(tmp_path), "net") as st:
            return {str(lease.ip): lease.container_id for lease in st.leases()}

    with store.DiskStore(str(tmp_path), "net") as st:
        ip = allocator.allocate([rs], [], st, "c1", "eth0")[0].address
    assert owners() == {"10.99.0.2": "c1"} and ip == "10.99.0.2/24"
    assert store._watches, "no inotify watch was set up"
    (net / "10.99.0.9").write_text("foreign\r\neth0")  # a lease written by someone else
    (net / "10.99.0.2").unlink()
    (net / "10.99.0.2").write_text("c2\r\neth0")  # released and taken again by another container
    assert owners() == {"10.99.0.2": "c2", "10.99.0.9": "foreign"}
    (net / "10.99.0.9").write_text("")  # a crashed writer's empty file: reclaimed by the next ADD
    with store.DiskStore(str(tmp_path), "net") as st:
        allocator.allocate([rs], [], st, "c3", "eth0")
    assert owners() == {"10.99.0.2": "c2", "10.99.0.3": "c3"}
    shutil.rmtree(net)  # the directory replaced: the watch dies, the next open rescans
    net.mkdir()
    (net / "10.99.0.7").write_text("c7\r\neth0")
    assert owners() == {"10.99.0.7": "c7"}


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


def test_one_inotify_instance_and_bounded_watches(tmp_path, monkeypatch):
    """Issue 15: one inotify instance per network directory leaked (root's limit of 128 instances is
    shared with containerd and the kubelet). Now: one instance for the process, at most MAX_WATCHES
    watches, and a removed directory's watch is gone (the kernel drops it, the view forgets it)."""
    import shutil

    from pycni.ipam import allocator, store
    from pycni.ipam.ranges import Range, RangeSet

    monkeypatch.setattr(store, "_cache_enabled", True)
    monkeypatch.setattr(store, "_watches", {})
    monkeypatch.setattr(store, "_by_wd", {})
    monkeypatch.setattr(store, "_inotify_fd", None)
    monkeypatch.setattr(store, "MAX_WATCHES", 20)
    before = _inotify_fds()
    rs = RangeSet.build([Range.build("10.99.0.0/24")], where="t")
    try:
        for n in range(30):
            with store.DiskStore(str(tmp_path), f"net{n}") as st:
                allocator.allocate([rs], [], st, "c1", "eth0")
                allocator.release(st, "c1", "eth0")
        mine = {fd: w for fd, w in _inotify_fds().items() if fd not in before}
        assert list(mine) == [store._inotify_fd], mine  # one instance, not one per directory
        assert mine[store._inotify_fd] == 20 == len(store._watches)  # bounded: the oldest gave theirs back
        for n in range(30):
            shutil.rmtree(tmp_path / f"net{n}")
        assert _inotify_fds()[store._inotify_fd] == 0  # released by the kernel when the directories went
        with store.DiskStore(str(tmp_path), "other") as st:
            st.leases()
        assert list(store._watches) == [str(tmp_path / "other")]  # the view forgot the removed ones
    finally:
        if store._inotify_fd is not None:
            os.close(store._inotify_fd)
