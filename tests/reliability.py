"""Machinery shared by the reliability tests (test_hostile, test_crash, test_concurrency,
test_store_damage, test_exhaustion) and integration/stress.py. No pytest in here.

* `Lab` owns every namespace, mount and temporary directory it creates and removes them all in
  `cleanup()` (call it in a `finally`). Plugins only ever run inside a node namespace of the lab,
  pods are namespaces of the lab: nothing touches the machine's own network.
* `Plugin runs`: `run()` execs an executable the way a runtime does (in the node namespace, env +
  stdin, one JSON document back); `start()`/`finish()` let a caller SIGKILL it at a random time;
  `Worker` is a long-lived process in the node namespace that runs requests through
  `pycni.runner.run` in-process (the path a daemon takes), so a storm can do thousands of operations.
* Snapshots of everything a plugin may leave behind: the node's links and addresses, its
  nftables/iptables rules, the lease store; `leases()` reads the store the way the plugin does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from conftest import PluginRun

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REFERENCE_DIR = Path("/usr/lib/cni")
CNI_PATH = f"{VENV_BIN}:{REFERENCE_DIR}"
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def exe(name: str) -> str:
    if os.path.isabs(name):
        return name
    ours = VENV_BIN / name
    return str(ours) if ours.exists() else str(REFERENCE_DIR / name)


def ns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def sh(*cmd: str, ns: str | None = None, check: bool = True, stdin: str | None = None) -> str:
    argv = list(cmd) if ns is None else ["nsenter", f"--net={ns_path(ns)}", "--", *cmd]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


# -- namespaces, mounts, temporary files ---------------------------------------------------------------


class Lab:
    """Everything a test creates, removed by `cleanup()` even after a failure."""

    def __init__(self, prefix: str = "pycnir") -> None:
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.mounts: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.workers: list[Worker] = []

    def netns(self, kind: str = "pod") -> str:
        name = f"{self.prefix}-{kind}-{uuid.uuid4().hex[:8]}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def delete_netns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if name in self.namespaces:
            self.namespaces.remove(name)

    def mount_tmpfs(self, path: Path, size: str, readonly: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size},mode=0755" + (",ro" if readonly else "")
        sh("mount", "-t", "tmpfs", "-o", opts, "pycni-test", str(path))
        self.mounts.append(str(path))

    def bind_readonly(self, path: Path) -> None:
        """A read-only view of `path` on itself (root ignores file modes, not a read-only mount)."""
        sh("mount", "--bind", str(path), str(path))
        self.mounts.append(str(path))
        sh("mount", "-o", "remount,bind,ro", str(path))

    def umount(self, path: Path | str) -> None:
        subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if str(path) in self.mounts:
            self.mounts.remove(str(path))

    def cleanup(self) -> None:
        for worker in list(self.workers):
            worker.stop()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.namespaces.clear()
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)
        self.mounts.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- configurations ------------------------------------------------------------------------------------


def bridge_conf(data_dir: Path | str, *, name: str = "relnet", bridge: str = "cni0", subnet: str = "10.88.0.0/24",
                ipam_type: str = "pycni-host-local", version: str = "1.1.0", ranges: list | None = None,
                **keys) -> dict:
    conf = {"cniVersion": version, "name": name, "type": "pycni", "bridge": bridge, "isGateway": True,
            "ipam": {"type": ipam_type, "dataDir": str(data_dir),
                     "ranges": ranges if ranges is not None else [[{"subnet": subnet}]]}}
    conf.update(keys)
    return conf


def hl_conf(data_dir: Path | str, *, name: str = "relnet", subnet: str = "10.88.0.0/24", version: str = "1.1.0",
            ranges: list | None = None, plugin: str = "pycni-host-local", **keys) -> dict:
    conf = {"cniVersion": version, "name": name, "type": plugin,
            "ipam": {"type": plugin, "dataDir": str(data_dir),
                     "ranges": ranges if ranges is not None else [[{"subnet": subnet}]]}}
    conf.update(keys)
    return conf


def gc_conf(conf: dict, valid: list[tuple[str, str]]) -> dict:
    return dict(conf, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]})


# -- running plugins -----------------------------------------------------------------------------------


class Outcome(PluginRun):
    """A plugin run that may have been killed on purpose."""

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def code(self) -> int | None:
        if self.returncode == 0 or self.killed:
            return None
        try:
            return int(self.json["code"])
        except Exception:  # noqa: BLE001 - no error document at all
            return -1


def plugin_env(command: str, cid: str | None, netns: str | None, ifname: str | None, args: str | None = None,
               path: str | None = CNI_PATH, extra: dict | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command}
    for key, value in (("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                       ("CNI_ARGS", args), ("CNI_PATH", path)):
        if value is not None:
            env[key] = value
    env.update(extra or {})
    return env


def _stdin(conf: dict | bytes | str) -> bytes:
    if isinstance(conf, dict):
        return json.dumps(conf).encode()
    return conf.encode() if isinstance(conf, str) else conf


def start(plugin: str, env: dict[str, str], node: str | None) -> subprocess.Popen:
    argv = [exe(plugin)]
    if node:
        argv = ["nsenter", f"--net={ns_path(node)}", "--", *argv]  # nsenter execs: same PID
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def finish(proc: subprocess.Popen, conf: dict | bytes | str, kill_after: float | None = None,
           timeout: float = 120) -> Outcome:
    """Feed stdin and wait; with `kill_after`, SIGKILL the plugin (by its PID) if still running then."""
    data = _stdin(conf)
    try:
        out, err = proc.communicate(data, timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def run(plugin: str, command: str, conf: dict | bytes | str, *, node: str | None, cid: str | None = "ctr1",
        netns: str | None = None, ifname: str | None = "eth0", args: str | None = None,
        path: str | None = CNI_PATH, extra_env: dict | None = None, kill_after: float | None = None) -> Outcome:
    env = plugin_env(command, cid, netns, ifname, args, path, extra_env)
    return finish(start(plugin, env, node), conf, kill_after)


WORKER_CODE = r"""
import json, os, sys
reply = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
from pycni import runner
import pycni.bridge.verbs, pycni.ipam.verbs, pycni.bridge.links
reply.write("ready\n"); reply.flush()
for line in sys.stdin:
    req = json.loads(line)
    rc, text = runner.run(req["plugin"], req["env"], req["stdin"].encode())
    reply.write(json.dumps({"rc": rc, "out": text}) + "\n"); reply.flush()
"""


class Worker:
    """A long-lived process in the node namespace running requests through pycni.runner.run in-process:
    the code path of a daemon, without an interpreter start per request. Can be SIGKILLed mid-request
    like an exec'd plugin (then it is restarted)."""

    def __init__(self, lab: Lab, node: str) -> None:
        self.lab, self.node = lab, node
        self.proc: subprocess.Popen | None = None
        lab.workers.append(self)
        self._spawn()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={ns_path(self.node)}", "--", sys.executable, "-c", WORKER_CODE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker did not start: {line!r}")

    def call(self, plugin: str, env: dict[str, str], conf: dict | bytes | str,
             kill_after: float | None = None) -> Outcome:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"plugin": plugin, "env": env, "stdin": _stdin(conf).decode()}) + "\n")
        self.proc.stdin.flush()
        if kill_after is not None:
            import select

            ready, _, _ = select.select([self.proc.stdout], [], [], kill_after)
            if not ready:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self._spawn()
                return Outcome(-signal.SIGKILL, "", "")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker died")
        data = json.loads(line)
        return Outcome(data["rc"], data["out"] + ("\n" if data["out"] else ""), "")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        if self in self.lab.workers:
            self.lab.workers.remove(self)


# -- observation ---------------------------------------------------------------------------------------


def node_links(node: str) -> dict[str, tuple]:
    """name -> (kind, master, alias, sorted global addresses) for every link of the namespace."""
    data = json.loads(sh("ip", "-j", "-d", "addr", "show", ns=node) or "[]")
    out = {}
    for link in data:
        kind = (link.get("linkinfo") or {}).get("info_kind", "")
        addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                       if a.get("scope") == "global")
        out[link["ifname"]] = (kind, link.get("master", ""), link.get("ifalias", ""), tuple(addrs))
    return out


BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def firewall(node: str) -> str:
    """Every nftables object (handles dropped) and iptables rule / user chain of the namespace; the
    empty built-in tables iptables-nft creates on first use (and never removes) are left out."""
    objects = json.loads(sh("nft", "-j", "list", "ruleset", ns=node) or '{"nftables": []}')["nftables"]
    busy = {(o["rule"]["family"], o["rule"]["table"]) for o in objects if "rule" in o}
    busy |= {(o[k]["family"], o[k]["table"]) for o in objects for k in ("set", "map") if k in o}
    busy |= {(o["chain"]["family"], o["chain"]["table"]) for o in objects
             if "chain" in o and o["chain"]["name"] not in BUILTIN_CHAINS}
    kept = []
    for obj in objects:
        ((kind, body),) = obj.items()
        if kind == "metainfo":
            continue
        where = (body.get("family"), body.get("table", body.get("name")))
        if where[0] in ("ip", "ip6") and where[1] in ("nat", "filter", "mangle", "raw") and where not in busy:
            continue
        kept.append({kind: {k: v for k, v in body.items() if k != "handle"}})
    lines = [json.dumps(o, sort_keys=True) for o in kept]
    for tool in ("iptables-save", "ip6tables-save"):
        for ln in sh(tool, ns=node, check=False).splitlines():
            if ln.startswith("-A") or (ln.startswith(":") and ln[1:].split()[0] not in BUILTIN_CHAINS):
                lines.append(f"{tool}: {ln}")
    return "\n".join(sorted(lines))


def files(root: Path) -> dict[str, bytes | str | None]:
    """Every path under root: file contents, '->target' for symlinks, None for directories."""
    out: dict[str, bytes | str | None] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "->" + str(os.readlink(p))
        elif p.is_dir():
            out[rel] = None
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = f"special {oct(p.lstat().st_mode)}"  # a FIFO must not be opened
    return out


def store_state(net_dir: Path) -> dict[str, bytes | str | None]:
    """The store without the round-robin cursor (it moves by design) and the lock file."""
    return {k: v for k, v in files(net_dir).items() if k != "lock" and not k.startswith("last_reserved_ip.")}


def leases(net_dir: Path) -> dict[str, tuple[str, str]]:
    """address -> (containerID, ifname) for every lease file (unreadable content: ('?', '?'))."""
    out = {}
    if not net_dir.is_dir():
        return out
    for p in net_dir.iterdir():
        try:
            ip = str(ipaddress.ip_address(p.name))
        except ValueError:
            continue
        try:
            text = p.read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            out[ip] = ("?", "?")
            continue
        cid, _, ifname = text.partition("\r\n")
        out[ip] = (cid.strip(), ifname.strip())
    return out


def pod_addresses(pod: str, ifname: str = "eth0") -> list[str]:
    data = json.loads(sh("ip", "-j", "addr", "show", ns=pod) or "[]")
    return sorted(a["local"] for link in data if link["ifname"] == ifname for a in link.get("addr_info", [])
                  if a.get("scope") == "global")


def pod_link_names(pod: str) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show", ns=pod) or "[]"))


def ping(node: str, address: str) -> bool:
    flag = "-6" if ":" in address else "-4"
    return subprocess.run(["nsenter", f"--net={ns_path(node)}", "--", "ping", flag, "-c", "1", "-W", "2", address],
                          capture_output=True, check=False).returncode == 0


def tmp_files(net_dir: Path) -> list[str]:
    return sorted(p.name for p in net_dir.iterdir() if p.name.startswith(".pycni-tmp-")) if net_dir.is_dir() else []


def new_cid(prefix: str = "c") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def rng(seed: int | None = None) -> random.Random:
    return random.Random(seed if seed is not None else int(os.environ.get("PYCNI_SEED", "0") or 0) or None)


# -- crash consistency (test_crash.py, integration/stress.py) ------------------------------------------

V4, V6 = {"subnet": "10.88.0.0/24"}, {"subnet": "fd88::/64"}

ADD_POINTS = {
    "inproc": ["bridge.add.start", "bridge.add.bridge", "bridge.veth.created", "bridge.add.veth",
               "bridge.add.spoofchk", "ipam.add.locked", "store.reserve.tmp", "store.reserve.link",
               "store.reserve.cursor", "store.reserve.tmp#2", "store.reserve.link#2", "ipam.add.allocated",
               "bridge.add.ipam", "bridge.add.pod", "bridge.add.gateway", "bridge.add.masq", "bridge.add.done"],
    "exec": ["bridge.add.start", "bridge.add.bridge", "bridge.veth.created", "bridge.add.veth", "bridge.add.ipam",
             "bridge.add.pod", "bridge.add.gateway", "bridge.add.masq", "bridge.add.done"],
    "hl": ["ipam.add.locked", "store.reserve.tmp", "store.reserve.link", "store.reserve.cursor",
           "store.reserve.tmp#2", "store.reserve.link#2", "store.reserve.cursor#2", "ipam.add.allocated"],
}
DEL_POINTS = {
    "inproc": ["bridge.del.start", "bridge.del.veth", "ipam.del.locked", "store.release", "store.release#2",
               "bridge.del.ipam", "bridge.del.masq"],
    "exec": ["bridge.del.start", "bridge.del.veth", "bridge.del.ipam", "bridge.del.masq"],
    "hl": ["ipam.del.locked", "store.release", "store.release#2"],
}


class CrashSetup:
    """One node namespace, one pod namespace (recreated when a test deletes it), one configuration."""

    def __init__(self, lab: Lab, variant: str) -> None:
        self.lab, self.variant = lab, variant
        self.node = lab.netns("node")
        self.data = lab.tmp / variant / "ipam"
        self.net_dir = self.data / "relnet"
        if variant == "inproc":
            self.plugin = "pycni"
            self.conf = bridge_conf(self.data, ranges=[[V4], [V6]], ipMasq=True, ipMasqBackend="nftables",
                                    macspoofchk=True)
        elif variant == "exec":
            self.plugin = "pycni"
            self.conf = bridge_conf(self.data, version="1.0.0", ipam_type="host-local", ipMasq=True,
                                    ipMasqBackend="iptables")
        else:
            self.plugin = "pycni-host-local"
            self.conf = hl_conf(self.data, ranges=[[V4], [V6]])
        self.pod = lab.netns("pod")
        cid = new_cid("warm")
        assert self.call("ADD", cid).returncode == 0
        assert self.call("DEL", cid).returncode == 0
        self.baseline = self.state()

    @property
    def bridged(self) -> bool:
        return self.plugin == "pycni"

    def call(self, command: str, cid: str | None, *, pod: str | None = None, fault: str | None = None,
             conf: dict | None = None, kill_after: float | None = None) -> Outcome:
        pod = pod or self.pod
        netns = ns_path(pod) if command in ("ADD", "CHECK") else (ns_path(pod) if cid else None)
        extra = {"PYCNI_FAULT": fault} if fault else None
        return run(self.plugin, command, conf or self.conf, node=self.node, cid=cid, netns=netns,
                   ifname="eth0" if cid else None, extra_env=extra, kill_after=kill_after)

    def gc_all(self) -> Outcome:
        return self.call("GC", None, conf=gc_conf(self.conf, []))

    def state(self) -> dict:
        out = {"store": store_state(self.net_dir)}
        if self.bridged:
            out["links"] = node_links(self.node)
            out["firewall"] = firewall(self.node)
        return out

    def assert_baseline(self, pods: list[str] | None = None) -> None:
        problems = self.differences(pods)
        assert not problems, problems

    def differences(self, pods: list[str] | None = None) -> list[str]:
        """What differs from the baseline: [] when the node is exactly as before."""
        state, base, out = self.state(), self.baseline, []
        if state["store"] != base["store"]:
            out.append(f"lease or temporary file left behind: {sorted(set(state['store']) ^ set(base['store']))}")
        if self.bridged:
            if state["links"] != base["links"]:
                out.append(f"link or address left behind: {sorted(set(state['links']) ^ set(base['links']))}")
            if state["firewall"] != self.baseline["firewall"]:
                out.append("firewall rule left behind")
            for pod in pods or [self.pod]:
                if pod_link_names(pod) != ["lo"]:
                    out.append(f"pod interface left behind in {pod}")
        return out

    def renew_pod(self) -> None:
        self.lab.delete_netns(self.pod)
        self.pod = self.lab.netns("pod")
