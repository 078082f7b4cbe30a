"""GC on a node (root): the same forms of the valid-attachments list as tests/unit/test_spec_gc.py
(tests/support/gc_cases.py), with the links, leases and rules they act on.

* the bridge by exec, with its IPAM in-process and exec'd: after every case the node's host veths,
  leases and masquerade entries name the same attachments (the expected ones), and a refused request
  changed nothing;
* through libcni: upstream `cnitool gc` (no list: libcni DELs every cached attachment, then GC without
  the key) and our driver's `gc --valid` (a list, and a Go nil list that libcni sends as null).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import reliability as rel
from bridge_support import CNI_PATH, ROOT, Env, bridge_run_dir_cleanup, veth_of
from conftest import VENV_BIN
from gc_cases import ACCEPTED, REFUSED

from pycni.spec.gc import LEGACY_KEY, VALID_KEY

__all__ = ["bridge_run_dir_cleanup"]


# -- the bridge by exec: links, leases and rules stay in step ---------------------------------------------------


@pytest.fixture
def env(netns, node, tmp_path) -> Env:
    return Env(netns, node, tmp_path)


@pytest.fixture(params=["in-process", "exec"])
def ipam_mode(request, tmp_path):
    """IPAM in-process (ipam.type pycni-host-local) or exec'd from CNI_PATH (the same executable under
    another name, so the bridge cannot run it in-process)."""
    if request.param == "in-process":
        return "pycni-host-local", CNI_PATH
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pycni-hl-exec").symlink_to(VENV_BIN / "pycni-host-local")
    return "pycni-hl-exec", f"{bindir}:{CNI_PATH}"


class Node:
    """Attachments ctrA and ctrB of one network, with ipMasq and macspoofchk; what each still has."""

    def __init__(self, env: Env, ipam_type: str, path: str) -> None:
        self.env, self.path = env, path
        self.conf = env.conf(version="1.1.0", ipMasq=True, macspoofchk=True, ipam_type=ipam_type)
        self.pods = {}
        self.ips = {}
        self.veths = {}

    def add(self, cid: str) -> None:
        pod = self.pods.get(cid) or self.env.pod()
        pod.cid = cid
        self.pods[cid] = pod
        result = self.env.add(self.conf, pod, path=self.path)
        self.ips[cid] = result["ips"][0]["address"].split("/")[0]
        self.veths[cid] = veth_of(result)

    def gc(self, keys: dict):
        return self.env.run("GC", dict(self.conf, **keys), None, path=self.path)

    def holding(self) -> dict[str, set[str]]:
        """Per kind of state, the attachments that still have it."""
        links = self.env.links()
        leases = {owner for owner, _ in rel.leases(self.env.ipam_dir / "testnet").values()}
        firewall = self.env.firewall()
        return {
            "veth": {cid for cid, veth in self.veths.items() if veth in links},
            "lease": leases,
            "masquerade": {cid for cid, ip in self.ips.items() if ip in firewall},
            "pod eth0": {cid for cid, pod in self.pods.items() if "eth0" in self.env.links(pod.name)},
        }


def test_bridge_and_ipam_agree_in_every_case(env, ipam_mode):
    """One node, every case in turn: refused requests change nothing (links, leases, rules, store
    bytes); accepted ones leave exactly the expected attachments, in every kind of state at once."""
    node = Node(env, *ipam_mode)
    before_fw = env.firewall()
    for cid in ("ctrA", "ctrB"):
        node.add(cid)
    full = {kind: {"ctrA", "ctrB"} for kind in ("veth", "lease", "masquerade", "pod eth0")}
    assert node.holding() == full
    for case, keys in REFUSED.items():
        store = rel.store_state(env.ipam_dir / "testnet")
        fw = env.firewall()
        res = node.gc(keys)
        assert res.returncode != 0 and res.json["code"] == 7, (case, res.stdout, res.stderr)
        assert node.holding() == full, case
        assert rel.store_state(env.ipam_dir / "testnet") == store and env.firewall() == fw, case
    for case, (keys, kept) in ACCEPTED.items():
        for cid in {"ctrA", "ctrB"} - node.holding()["lease"]:
            node.add(cid)
        res = node.gc(keys)
        assert res.returncode == 0 and res.stdout == "", (case, res.stdout, res.stderr)
        assert node.holding() == {kind: kept for kind in full}, case
    assert node.gc({VALID_KEY: []}).returncode == 0
    assert env.firewall() == before_fw


def test_delegate_that_cannot_gc_leaves_the_node_as_it_was(env, tmp_path):
    """IPAM goes first: a delegate that refuses GC (Debian's host-local 1.1.1 answers code 3) stops the GC
    before the bridge removes a link, so links and leases stay in step."""
    ref = rel.REFERENCE_DIR / "host-local"
    if not ref.exists():
        pytest.skip("Debian's host-local is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "old-host-local").symlink_to(ref)
    path = f"{bindir}:{CNI_PATH}"
    conf = env.conf(version="1.0.0", ipMasq=True, ipam_type="old-host-local")
    pod = env.pod()
    result = env.add(conf, pod, path=path)
    res = env.run("GC", dict(conf, cniVersion="1.1.0", **{VALID_KEY: []}), None, path=path)
    assert res.returncode != 0 and res.json["code"] == 3, res.stdout
    assert veth_of(result) in env.links() and env.leases() == ["10.77.0.2"]
    assert result["ips"][0]["address"].split("/")[0] in env.firewall()


# -- through libcni: upstream cnitool and our driver ------------------------------------------------------------

CNITOOL = ROOT / "build" / "bin" / "cnitool"
DRIVER = ROOT / "build" / "bin" / "pycni-cnitool"


class Libcni:
    """A network of its own (unique name: libcni's cache in /var/lib/cni is shared by the machine) in a
    conf dir of the test, plugins from the venv; commands run in the node namespace."""

    def __init__(self, env: Env) -> None:
        for tool in (CNITOOL, DRIVER):
            if not tool.exists():
                pytest.fail(f"{tool} is missing: run `make build`")
        self.env = env
        self.name = f"gc-{uuid.uuid4().hex[:8]}"
        self.conf = env.conf(version="1.1.0", ipMasq=True, ipam_type="pycni-host-local")
        self.conf["name"] = self.name
        self.confdir = env.tmp / "net.d"
        self.confdir.mkdir(exist_ok=True)
        body = {k: v for k, v in self.conf.items() if k not in ("cniVersion", "name")}
        (self.confdir / "10-gc.conflist").write_text(json.dumps(
            {"cniVersion": "1.1.0", "name": self.name, "plugins": [body]}))

    def __call__(self, tool, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        envv = {"PATH": os.environ["PATH"], "NETCONFPATH": str(self.confdir), "CNI_PATH": CNI_PATH, **(env or {})}
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{self.env.node}", "--", str(tool), *args],
                              env=envv, capture_output=True, text=True, timeout=120, check=False)

    def leases(self) -> dict[str, str]:
        return {ip: owner for ip, (owner, _) in rel.leases(self.env.ipam_dir / self.name).items()}

    def veths(self) -> set[str]:
        return {name for name in self.env.links() if name.startswith("veth")}


@pytest.fixture
def lib(env):
    """A Libcni network; whatever a failed test left in libcni's machine-wide cache for it is removed."""
    network = Libcni(env)
    yield network
    for entry in Path("/var/lib/cni/results").glob(f"{network.name}-*"):
        entry.unlink()


def test_cnitool_gc_removes_every_attachment(env, lib):
    """`cnitool gc <net> <netns>` as upstream documents it: libcni DELs each cached attachment, then sends
    GC without any list; the plugin removes what libcni did not know of (an attachment ADDed outside it)."""
    pods = [env.pod(), env.pod()]
    for pod in pods:
        res = lib(CNITOOL, "add", lib.name, pod.path)
        assert res.returncode == 0, res.stderr
    orphan = env.pod()
    env.add(dict(lib.conf), orphan)  # not in libcni's cache: only the plugin's GC can find it
    assert len(lib.leases()) == 3 and len(lib.veths()) == 3
    res = lib(CNITOOL, "gc", lib.name, pods[0].path)
    assert res.returncode == 0, res.stderr
    assert lib.leases() == {} and lib.veths() == set()
    assert not list(Path("/var/lib/cni/results").glob(f"{lib.name}-*"))  # libcni DELed what it had cached


def test_driver_gc_with_a_list_and_with_a_nil_list(env, lib):
    """GCNetworkList with GCArgs: libcni DELs the cached attachments not listed and sends the list under both
    keys (agreeing); a Go nil list arrives as null under both keys: nothing is valid."""
    cache = {"CNI_CACHE_DIR": str(env.tmp / "cache")}
    pods = [env.pod() for _ in range(3)]
    for pod in pods:
        res = lib(DRIVER, "add", lib.name, pod.path, env=dict(cache, CNI_CONTAINERID=pod.cid))
        assert res.returncode == 0, res.stderr
    orphan = env.pod()
    env.add(dict(lib.conf), orphan)
    res = lib(DRIVER, "gc", lib.name, "--valid", f"{pods[1].cid}/eth0", f"{orphan.cid}/eth0", env=cache)
    assert res.returncode == 0, res.stderr
    assert sorted(lib.leases().values()) == sorted([pods[1].cid, orphan.cid])
    assert len(lib.veths()) == 2
    res = lib(DRIVER, "gc", lib.name, "--valid", env=cache)
    assert res.returncode == 0, res.stderr
    assert lib.leases() == {} and lib.veths() == set()
    assert not list((env.tmp / "cache" / "results").glob(f"{lib.name}-*"))  # libcni DELed its own


def test_driver_gc_malformed_list_refused_by_plugin(env, lib):
    """A request libcni would never send, handed to the plugins through a conflist's own keys: refused (7)
    with nothing removed - pycni does not trust its caller to be libcni."""
    pod = env.pod()
    assert lib(DRIVER, "add", lib.name, pod.path, env={"CNI_CONTAINERID": pod.cid,
                                                      "CNI_CACHE_DIR": str(env.tmp / "cache")}).returncode == 0
    conflist = json.loads((lib.confdir / "10-gc.conflist").read_text())
    conflist["plugins"][0][VALID_KEY] = [{"containerID": pod.cid, "ifname": "eth0"}]
    conflist["plugins"][0][LEGACY_KEY] = [{"containerID": "someone-else", "ifname": "eth0"}]
    (lib.confdir / "10-gc.conflist").write_text(json.dumps(conflist))
    res = lib(CNITOOL, "gc", lib.name, pod.path)  # cnitool's cache holds nothing: no DEL, then GC
    assert res.returncode != 0 and "disagree" in res.stderr, res.stderr
    assert list(lib.leases().values()) == [pod.cid] and len(lib.veths()) == 1
    res = lib(DRIVER, "del", lib.name, pod.path, env={"CNI_CONTAINERID": pod.cid,
                                                     "CNI_CACHE_DIR": str(env.tmp / "cache")})
    assert res.returncode == 0, res.stderr
    assert lib.leases() == {}
