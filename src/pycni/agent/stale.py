"""Leases of sandboxes the container runtime no longer has: found from the runtime's own list (CRI
ListPodSandbox, cri.py), released with a CNI DEL of exactly that attachment.

Why: a lease is released by the runtime's DEL when it stops or removes a sandbox. A sandbox the runtime
forgot without a DEL - its state lost, a node restored from a snapshot, a runtime that crashed between
ADD and recording the sandbox - keeps its address forever (the reference host-local never reclaims it:
containernetworking/plugins #252, #332, #498). containerd 1.6/1.7 never sends CNI GC, so the agent does it.

Rules:
* only leases of our network's store (`<dataDir>/<network>/<ip>`, content "containerID\\r\\nifname");
* only when the runtime answered with at least one sandbox: this agent's own pod is one, so an empty list
  means we asked the wrong runtime - nothing is released then;
* a sandbox the runtime lists in any state keeps its lease (the runtime's own DEL handles a NOTREADY one);
* a lease younger than `grace` seconds is left alone: containerd lists a sandbox only once RunPodSandbox,
  whose CNI ADD made the lease, has finished;
* release = CNI DEL (SPEC.md "DEL": CNI_NETNS may be empty; missing things are not errors) of the bridge
  plugin with this network's configuration, exec'd from the node's CNI bin dir as a runtime would (the
  installed version, its own process and logging): veth, masquerade entries and (through the delegated
  IPAM plugin) the lease. Not CNI GC: GC removes everything missing from its list, which would race with an
  ADD that starts after the list was taken; a DEL names one dead attachment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from dataclasses import dataclass, field

from ..ipam.config import DEFAULT_DATA_DIR
from . import cri


@dataclass
class Outcome:
    released: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def leases(store_dir: str) -> dict[str, tuple[str, str, float]]:
    """{ip: (container id, ifname, mtime)} of the lease files in one network's store."""
    out = {}
    try:
        names = os.listdir(store_dir)
    except FileNotFoundError:
        return out
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue  # lock, last_reserved_ip.N, temporary files
        path = os.path.join(store_dir, name)
        try:
            with open(path, "rb") as f:
                lines = f.read(4096).decode("utf-8", "replace").splitlines()
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        cid = lines[0].strip() if lines else ""
        if cid:
            out[name] = (cid, lines[1].strip() if len(lines) > 1 and lines[1].strip() else "eth0", mtime)
    return out


def delete_request(conflist: dict, container_id: str, ifname: str, cni_path: str) -> tuple[dict, bytes]:
    """The environment and stdin of the DEL libcni would send for the network's first (bridge) plugin."""
    plugin = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": container_id, "CNI_NETNS": "", "CNI_IFNAME": ifname,
           "CNI_PATH": cni_path, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    return env, json.dumps(plugin).encode()


def exec_plugin(plugin: str, env: dict, stdin: bytes, timeout: float = 60.0) -> tuple[int, str]:
    """Run `CNI_PATH/<plugin>` like a runtime: (exit status, stdout)."""
    path = os.path.join(env["CNI_PATH"], plugin)
    try:
        proc = subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"{path}: {exc}"
    return proc.returncode, (proc.stdout or proc.stderr).decode("utf-8", "replace")


def reconcile(conflist: dict, socket_path: str, cni_path: str, grace: float, now: float | None = None,
              list_sandboxes=cri.list_pod_sandboxes, run=exec_plugin) -> Outcome:
    result = Outcome()
    ipam = conflist["plugins"][0].get("ipam") or {}
    store = os.path.join(ipam.get("dataDir") or DEFAULT_DATA_DIR, conflist["name"])
    found = leases(store)
    if not found:
        return result
    try:
        sandboxes = list_sandboxes(socket_path)
    except cri.CRIError as exc:
        result.errors.append(f"stale leases: {exc}")
        return result
    if not sandboxes:
        result.errors.append(f"stale leases: the runtime at {socket_path} lists no sandbox at all (not this node's "
                             "runtime?): nothing released")
        return result
    known = {s.id for s in sandboxes}
    now = time.time() if now is None else now
    for ip, (cid, ifname, mtime) in sorted(found.items()):
        if cid in known or now - mtime < grace:
            continue
        env, stdin = delete_request(conflist, cid, ifname, cni_path)
        status, out = run("pycni", env, stdin)
        if status == 0:
            result.released.append(f"released the lease {ip} of sandbox {cid[:12]} (unknown to the runtime)")
        else:
            result.errors.append(f"stale lease {ip} of sandbox {cid[:12]}: DEL failed: {out.strip()[:300]}")
    return result
