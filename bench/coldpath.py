#!/usr/bin/env python3
"""Where the CPU of a cold verb goes (docs/performance.md, issue 13 "cold path"), stage by stage.

    sudo .venv/bin/python bench/coldpath.py [--rounds 10]    # standalone: its own namespaces
    (bench/bench.py runs the same stages in its cold mode: the "cold ADD by stage" rows)

A cold ADD is exec'd as the launcher would run it, except that the script first imports, one stage
at a time, what the verb is going to import anyway, reading the process's CPU time (user + system)
after each stage; then it runs the verb exactly as the launcher does. Nothing is patched or stubbed:
the imports are the ones the verb makes (tests/test_cold_path.py checks that the cold path imports
these modules), so the sum of the stages is the verb's CPU time.

Stages: the interpreter's own start (before the first line), pycni.cli + the daemon client (the
shim), pydantic's import, importlib.metadata (imported by pydantic's plugin loader even with plugins
off), pycni's spec models, the verb modules with their models, pyroute2 (its package __init__ imports
the whole library, asyncio included), and the verb itself (the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid

STAGES = ("interpreter", "cli + daemon client", "pydantic", "importlib.metadata", "spec models",
          "verb modules + models", "pyroute2", "the verb")

SCRIPT = """
import os, resource
def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1000
_marks = [_cpu()]
import pycni.cli, pycni.daemon.client
pycni.cli.disable_pydantic_plugins()  # what main_bridge does before its first import of pydantic
_marks.append(_cpu())
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator  # as spec.config
_marks.append(_cpu())
import importlib.metadata
_marks.append(_cpu())
import pycni.spec.config, pycni.spec.result
_marks.append(_cpu())
import pycni.bridge.verbs, pycni.bridge.config, pycni.ipam.verbs, pycni.ipam.config
_marks.append(_cpu())
import pyroute2
_marks.append(_cpu())
import atexit
def _report():
    _marks.append(_cpu())
    steps = [_marks[0]] + [b - a for a, b in zip(_marks, _marks[1:])]
    os.write(2, ("PYCNI-COLD-STAGES " + " ".join(f"{x:.2f}" for x in steps) + "\\n").encode())
atexit.register(_report)
pycni.cli.main_bridge()
"""


def parse(stderr: bytes | str) -> dict[str, float] | None:
    """The stages (ms of CPU) a SCRIPT run printed on its stderr, None if it printed none."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line for line in text.splitlines() if line.startswith("PYCNI-COLD-STAGES ")]
    if not lines:
        return None
    values = [float(x) for x in lines[-1].split()[1:]]
    return dict(zip(STAGES, values, strict=True))


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: round(statistics.median(run[stage] for run in runs), 1) for stage in STAGES}


def text(stages: dict[str, dict[str, float]]) -> str:
    """stages: verb -> {stage: ms}. A small table, one column per verb."""
    verbs = list(stages)
    lines = [f"{'cold, CPU ms by stage':<26}" + "".join(f"{v:>10}" for v in verbs)]
    for stage in STAGES:
        lines.append(f"{'  ' + stage:<26}" + "".join(f"{stages[v][stage]:>10.1f}" for v in verbs))
    lines.append(f"{'  total':<26}" + "".join(f"{sum(stages[v].values()):>10.1f}" for v in verbs))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--python", default=sys.executable, help="interpreter of the launchers (default: this one)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("coldpath.py needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:6]
    node, pods = f"pycnib-{tag}-node", [f"pycnib-{tag}-pod{i}" for i in range(2)]
    tmp = tempfile.mkdtemp(prefix="pycni-coldpath-")
    conf = {"cniVersion": "1.0.0", "name": "cold", "type": "pycni", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.98.0.0/16"}]], "dataDir": f"{tmp}/ipam"}}
    runs: dict[str, list[dict[str, float]]] = {"ADD": [], "DEL": []}
    made: list[str] = []
    try:
        for ns in (node, *pods):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for i in range(args.rounds + 1):
            for verb in ("ADD", "DEL"):
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": verb, "CNI_IFNAME": "eth0",
                       "CNI_CONTAINERID": f"cold-{i}", "CNI_NETNS": f"/var/run/netns/{pods[i % 2]}",
                       "CNI_PATH": "/nonexistent", "PYCNI_SOCKET": f"{tmp}/no-daemon.sock"}
                proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{node}", "--", args.python, "-I", "-c", SCRIPT],
                                      input=json.dumps(conf).encode(), env=env, capture_output=True, check=False)
                stages = parse(proc.stderr)
                if proc.returncode != 0 or stages is None:
                    raise SystemExit(f"cold {verb} failed ({proc.returncode}): {proc.stdout!r} {proc.stderr[-1500:]!r}")
                if i:  # the first round writes the bytecode caches of a fresh checkout
                    runs[verb].append(stages)
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", tmp], check=False)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds, {args.python}")
    print(text({verb: median_stages(r) for verb, r in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
