"""`make bench` (bench/bench.py) works: a quick run of every mode, in namespaces of its own (root).
Assertions are on what the report holds and what the run leaves behind, never on time."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO as ROOT


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
