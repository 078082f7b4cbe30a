#!/usr/bin/env python3
"""`make stress`: the crash and concurrency tests at a larger scale than CI, with a summary table.

  1. crash sweep: SIGKILL pycni / pycni-host-local at every named step of ADD and DEL
     (PYCNI_FAULT, see src/pycni/faults.py) `--sweeps` times, plus `--random-kills` kills after a
     random delay; after each, one DEL must restore the node exactly (tests/support/reliability.CrashSetup);
  2. storm: `--ops` random ADD / DEL / CHECK / GC operations from `--workers` workers on one store,
     pycni exec'd and in-process, the reference host-local exec'd alongside, a fraction
     (`--kill-rate`) SIGKILLed after a random delay and recovered with a DEL (tests/support/storm.py), with
     invariant checks after every step and full checks every 100 steps and after every GC.

Everything runs in network namespaces created here (and removed at the end, also on Ctrl-C or
SIGTERM). Exit status 1 when any leak or duplicate was found (or an unexpected error), else 0.
Run as root from the repository: .venv/bin/python integration/stress.py [--ops 5000]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "support"), str(TESTS)]  # reliability and storm; conftest (which they import)

import reliability as rel
import storm


def crash_sweep(lab: rel.Lab, sweeps: int, random_kills: int, seed: int | None) -> dict:
    out = {"operations": 0, "kills": 0, "leaks": 0, "duplicates": 0, "errors": collections.Counter(),
           "problems": []}
    setups = {v: rel.CrashSetup(lab, v) for v in ("inproc", "exec", "hl")}
    r = rel.rng(seed)

    def call(s: rel.CrashSetup, *a, **kw) -> rel.Outcome:
        res = s.call(*a, **kw)
        out["operations"] += 1
        if res.killed:
            out["kills"] += 1
        elif res.returncode != 0:
            out["errors"][res.code] += 1
            out["problems"].append(f"{s.variant} {a[0]}: {res.stdout.strip()[:200]}")
        return res

    def verify(s: rel.CrashSetup, what: str) -> None:
        owners = collections.Counter(rel.leases(s.net_dir).values())
        dup = [o for o, n in owners.items() if n > 1]
        if dup:
            out["duplicates"] += len(dup)
            out["problems"].append(f"{what}: attachments holding two leases {dup}")
        problems = s.differences()
        if problems:
            out["leaks"] += 1
            out["problems"].append(f"{what}: {problems}")
            s.renew_pod()  # repair, so that the next round starts from the baseline again
            call(s, "GC", None, conf=rel.gc_conf(s.conf, [])) if s.variant != "exec" else None

    for _ in range(sweeps):
        for variant, s in setups.items():
            for point in rel.ADD_POINTS[variant]:
                cid = rel.new_cid("sw")
                res = call(s, "ADD", cid, fault=point)
                if not res.killed:
                    out["problems"].append(f"{variant}: not killed at {point}")
                call(s, "DEL", cid)
                verify(s, f"{variant} ADD killed at {point}")
            for point in rel.DEL_POINTS[variant]:
                cid = rel.new_cid("sw")
                call(s, "ADD", cid)
                res = call(s, "DEL", cid, fault=point)
                if not res.killed:
                    out["problems"].append(f"{variant}: not killed at {point}")
                call(s, "DEL", cid)
                verify(s, f"{variant} DEL killed at {point}")
    done = 0
    variants = list(setups)
    while done < random_kills:
        s = setups[variants[done % len(variants)]]
        cid = rel.new_cid("rk")
        limit = 0.3 if s.bridged else 0.15
        if r.random() < 1 / 3:
            call(s, "ADD", cid)
            res = call(s, "DEL", cid, kill_after=r.uniform(0, limit))
        else:
            res = call(s, "ADD", cid, kill_after=r.uniform(0, limit))
        done += res.killed
        call(s, "DEL", cid)
        verify(s, f"{s.variant} random kill")
    return out


def render(rows: list[tuple[str, object, object]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"  {'':<{width}}  {'crash sweep':>12}  {'storm':>10}  {'total':>10}"]
    for name, a, b in rows:
        total = (a or 0) + (b or 0) if isinstance(a, int) and isinstance(b, int) else ""
        lines.append(f"  {name:<{width}}  {a!s:>12}  {b!s:>10}  {total!s:>10}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=5000, help="storm operations (default 5000)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--kill-rate", type=float, default=0.2, help="fraction of storm operations killed")
    ap.add_argument("--sweeps", type=int, default=2, help="passes over every named crash point")
    ap.add_argument("--random-kills", type=int, default=300, help="random-time kills in the crash sweep")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("stress.py needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    lab = rel.Lab("pycnistress")
    t0 = time.monotonic()
    try:
        sweep = crash_sweep(lab, args.sweeps, args.random_kills, args.seed)
        t1 = time.monotonic()
        print(f"crash sweep: {sweep['operations']} operations, {sweep['kills']} kills, {t1 - t0:.0f} s", flush=True)
        st = storm.Storm(lab, workers=args.workers, kill_rate=args.kill_rate, seed=args.seed)
        stats = st.run(args.ops)
        t2 = time.monotonic()
        print(f"storm: {stats.total} operations, {stats.kills} kills, {t2 - t1:.0f} s", flush=True)
    finally:
        lab.cleanup()
    codes = sorted(set(sweep["errors"]) | set(stats.errors), key=str)
    rows = [("operations", sweep["operations"], stats.total), ("kills (SIGKILL)", sweep["kills"], stats.kills),
            ("leaks found", sweep["leaks"], stats.leaks), ("duplicates found", sweep["duplicates"], stats.duplicates)]
    rows += [(f"errors, code {c}", sweep["errors"].get(c, 0), stats.errors.get(c, 0)) for c in codes]
    if not codes:
        rows.append(("errors", 0, 0))
    rows += [("full invariant checks", "", stats.full_checks), ("seconds", f"{t1 - t0:.0f}", f"{t2 - t1:.0f}")]
    print("\npycni stress\n" + render(rows))
    print("\nstorm routes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.routes.items())))
    problems = sweep["problems"] + stats.problems
    for p in problems[:30]:
        print("PROBLEM:", p)
    bad = sweep["leaks"] + stats.leaks + sweep["duplicates"] + stats.duplicates
    if bad or problems:
        print(f"\nFAILED: {bad} leaks/duplicates, {len(problems)} problems")
        return 1
    print("\nOK: no leak, no duplicate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
