"""Crash consistency: SIGKILL the plugin at every named step of ADD, DEL and GC (pycni.faults, env
PYCNI_FAULT) and at random times, then check that one DEL - or, once the sandbox is gone, one GC
with an empty valid-attachments list - restores the node exactly: no lease, temporary file, veth,
pod interface, address or firewall rule left, and no address held twice.

Three set-ups, each in its own node namespace:
  inproc  pycni, in-process host-local, dual-stack, ipMasq (nftables) + macspoofchk, spec 1.1.0
  exec    pycni delegating to the reference /usr/lib/cni/host-local, ipMasq (iptables), spec 1.0.0
  hl      pycni-host-local alone, dual-stack
The baseline is taken after one ADD + DEL: the bridge and its gateway addresses stay by design
(the reference does the same), everything else must go.

PYCNI_CRASH_KILLS sets the number of random-time kills (default 150: with the 51 named points, 201
kills per run).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import reliability as rel
from bridge_support import bridge_run_dir_cleanup

__all__ = ["bridge_run_dir_cleanup"]

ADD_POINTS, DEL_POINTS, Setup = rel.ADD_POINTS, rel.DEL_POINTS, rel.CrashSetup


@pytest.fixture(scope="module")
def setups():
    lab = rel.Lab("pycnic")
    made: dict[str, Setup] = {}
    try:
        def get(variant: str) -> Setup:
            if variant not in made:
                made[variant] = Setup(lab, variant)
            return made[variant]

        yield get
    finally:
        lab.cleanup()


def _add_cases():
    return [(v, p) for v, points in ADD_POINTS.items() for p in points]


def _del_cases():
    return [(v, p) for v, points in DEL_POINTS.items() for p in points]


@pytest.mark.parametrize("variant, point", _add_cases(), ids=[f"{v}-{p}" for v, p in _add_cases()])
def test_kill_during_add(setups, variant, point):
    s: Setup = setups(variant)
    cid = rel.new_cid("add")
    res = s.call("ADD", cid, fault=point)
    assert res.killed, f"the plugin was not killed at {point}: rc {res.returncode} {res.stdout} {res.stderr}"
    use_gc = variant == "inproc" and ADD_POINTS[variant].index(point) % 2 == 1
    if use_gc:
        # the runtime gave up on the sandbox: its netns goes, then a GC with nothing valid
        s.renew_pod()
        res = s.gc_all()
    else:
        res = s.call("DEL", cid)
    assert res.returncode == 0, res.stdout + res.stderr
    s.assert_baseline()
    if ADD_POINTS[variant].index(point) % 3:
        return
    # and the attachment can be made again, with the same container ID (every third point: time)
    again = s.call("ADD", cid)
    assert again.returncode == 0, again.stdout + again.stderr
    assert s.call("DEL", cid).returncode == 0
    s.assert_baseline()


@pytest.mark.parametrize("variant, point", _del_cases(), ids=[f"{v}-{p}" for v, p in _del_cases()])
def test_kill_during_del(setups, variant, point):
    s: Setup = setups(variant)
    cid = rel.new_cid("del")
    assert s.call("ADD", cid).returncode == 0
    res = s.call("DEL", cid, fault=point)
    assert res.killed, f"the plugin was not killed at {point}: rc {res.returncode} {res.stdout} {res.stderr}"
    res = s.call("DEL", cid)
    assert res.returncode == 0, res.stdout + res.stderr
    s.assert_baseline()


@pytest.mark.parametrize("point", ["store.release", "store.release#2", "ipam.gc.collected"])
def test_kill_during_gc(setups, point):
    s: Setup = setups("inproc")
    pods = [s.lab.netns("pod") for _ in range(2)]
    cids = [rel.new_cid("gc") for _ in pods]
    for cid, pod in zip(cids, pods):
        assert s.call("ADD", cid, pod=pod).returncode == 0
    res = rel.run(s.plugin, "GC", rel.gc_conf(s.conf, []), node=s.node, cid=None, ifname=None,
                  extra_env={"PYCNI_FAULT": point})
    assert res.killed, res.stdout + res.stderr
    assert s.gc_all().returncode == 0
    s.assert_baseline(pods)
    for pod in pods:
        s.lab.delete_netns(pod)


def test_kill_at_random_times(setups):
    """Kills after a random delay (0-300 ms for pycni, 0-150 ms for the faster pycni-host-local), four
    lanes in parallel per set-up, each lane with its own pod; after every round the lanes' DELs must
    have restored the baseline. A third of the kills hit a DEL (of an attachment made just before)."""
    total = int(os.environ.get("PYCNI_CRASH_KILLS", "150"))
    random = rel.rng()
    stats = {"kills": 0, "rounds": 0, "completed": 0}
    lock = threading.Lock()
    variants = ["inproc", "exec", "hl", "hl"]
    lanes = 4
    pods = {v: [setups(v).lab.netns("pod") for _ in range(lanes)] for v in set(variants)}

    def lane(s: Setup, pod: str, seed: int) -> None:
        r = rel.rng(seed)
        cid = rel.new_cid("rnd")
        limit = 0.3 if s.bridged else 0.15
        if r.random() < 1 / 3:
            assert s.call("ADD", cid, pod=pod).returncode == 0
            res = s.call("DEL", cid, pod=pod, kill_after=r.uniform(0, limit))
        else:
            res = s.call("ADD", cid, pod=pod, kill_after=r.uniform(0, limit))
        with lock:
            if res.killed:
                stats["kills"] += 1
            else:
                assert res.returncode == 0, res.stdout + res.stderr
                stats["completed"] += 1
        recovered = s.call("DEL", cid, pod=pod)
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr

    with ThreadPoolExecutor(max_workers=lanes) as pool:
        while stats["kills"] < total:
            variant = variants[stats["rounds"] % len(variants)]
            s = setups(variant)
            futures = [pool.submit(lane, s, pods[variant][i], random.randrange(1 << 30)) for i in range(lanes)]
            for f in futures:
                f.result()
            s.assert_baseline(pods[variant])
            stats["rounds"] += 1
            assert stats["rounds"] < total * 2, f"kills do not land: {stats}"
    print(f"random kills: {stats}")
    assert stats["kills"] >= total
