"""`make bench` (bench/bench.py) works: a quick run of every mode, in namespaces of its own (root).
Assertions are on what the report holds and what the run leaves behind, never on time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO as ROOT


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
