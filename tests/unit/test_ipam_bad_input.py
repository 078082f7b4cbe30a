"""Bad input to pycni-host-local: every case must end in exactly one spec error object on stdout
(SPEC.md "Error"), a non-zero exit, no Python traceback anywhere, and no change on disk.

The store is pre-populated with one lease from a valid ADD, and the plugin runs with its working
directory inside tmp_path, so the snapshot (every file under tmp_path, names and contents) also
catches a refused request that wrote somewhere else (a relative or '..' dataDir, say).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import PluginRun, exec_plugin, plugin_exe

HL = "pycni-host-local"
NET = "badnet"
OWNER = "owner"  # the container holding the pre-populated lease
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def conf(data_dir: Path, version: str = "1.0.0", **ipam) -> dict:
    body = {"type": HL, "dataDir": str(data_dir), "ranges": [[{"subnet": "10.1.0.0/24"}]]}
    body.update(ipam)
    return {"cniVersion": version, "name": NET, "type": HL, "ipam": body}


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def dumps(d) -> bytes:
    return json.dumps(d).encode()


@dataclass
class Case:
    code: int
    stdin: Callable[[Path], bytes]  # data_dir -> stdin
    command: str = "ADD"
    env: dict = field(default_factory=dict)  # exec_plugin keyword overrides; "unset": variables to drop


def ranges(*sets) -> Callable[[Path], bytes]:
    return lambda d: dumps(conf(d, ranges=list(sets)))


def ipam(**kw) -> Callable[[Path], bytes]:
    return lambda d: dumps(conf(d, **kw))


def top(**kw) -> Callable[[Path], bytes]:
    """Change top-level keys of the configuration."""
    return lambda d: dumps(dict(conf(d), **kw))


def good(d: Path) -> bytes:
    return dumps(conf(d))


V4 = {"subnet": "10.1.0.0/24"}

CASES: dict[str, Case] = {
    # -- decode failures (6) --
    "malformed-json": Case(6, lambda d: b'{"cniVersion": "1.0.0", "name": }'),
    "truncated-json": Case(6, lambda d: good(d)[: len(good(d)) // 2]),
    "trailing-garbage": Case(6, lambda d: good(d) + b" {}"),
    "empty-stdin": Case(6, lambda d: b""),
    "json-array": Case(6, lambda d: b"[" + good(d) + b"]"),
    "non-utf8": Case(6, lambda d: good(d).replace(NET.encode(), b"bad\xff\xfenet")),
    "nan-literal": Case(6, lambda d: good(d).replace(b'"' + NET.encode() + b'"', b"NaN")),
    "deeply-nested": Case(6, lambda d: b"[" * 200_000 + b"]" * 200_000),
    "cniVersion-not-a-string": Case(6, top(cniVersion=1)),
    # -- too large (7) --
    "stdin-over-1MiB": Case(7, lambda d: good(d) + b" " * (1 << 20)),
    # -- versions (1) --
    "missing-cniVersion": Case(1, lambda d: dumps(without(conf(d), "cniVersion"))),
    "cniVersion-0.2.0": Case(1, top(cniVersion="0.2.0")),
    "cniVersion-9.9.9": Case(1, top(cniVersion="9.9.9")),
    "cniVersion-abc": Case(1, top(cniVersion="abc")),
    "CHECK-with-0.3.1": Case(1, top(cniVersion="0.3.1"), "CHECK", {"container_id": OWNER}),
    "GC-with-1.0.0": Case(1, lambda d: dumps(dict(conf(d), **{"cni.dev/valid-attachments": []})), "GC"),
    "STATUS-with-1.0.0": Case(1, good, "STATUS"),
    # -- environment (4) --
    "missing-CNI_COMMAND": Case(4, good, env={"unset": ["CNI_COMMAND"]}),
    "empty-CNI_COMMAND": Case(4, good, ""),
    "unknown-CNI_COMMAND": Case(4, good, "FROB"),
    "lowercase-CNI_COMMAND": Case(4, good, "add"),
    "missing-CNI_CONTAINERID": Case(4, good, env={"container_id": None}),
    "missing-CNI_IFNAME": Case(4, good, env={"ifname": None}),
    "missing-CNI_NETNS-for-ADD": Case(4, good, env={"netns": None}),
    "missing-CNI_NETNS-for-CHECK": Case(4, good, "CHECK", {"netns": None, "container_id": OWNER}),
    "missing-CNI_PATH": Case(4, good, env={"unset": ["CNI_PATH"]}),
    "empty-CNI_PATH": Case(4, good, env={"extra_env": {"CNI_PATH": ""}}),
    "relative-CNI_NETNS": Case(4, good, env={"netns": "netns/x"}),
    "containerid-slash": Case(4, good, env={"container_id": "a/b"}),
    "containerid-dotdot": Case(4, good, env={"container_id": ".."}),
    "containerid-newline": Case(4, good, env={"container_id": "abc\ndef"}),
    "containerid-trailing-newline": Case(4, good, env={"container_id": "owner\n"}),
    "containerid-leading-dash": Case(4, good, env={"container_id": "-abc"}),
    "containerid-non-utf8": Case(4, good, env={"container_id": "abc\udcff"}),
    "containerid-slash-on-DEL": Case(4, good, "DEL", {"container_id": "../owner"}),
    "ifname-too-long": Case(4, good, env={"ifname": "e" * 16}),
    "ifname-slash": Case(4, good, env={"ifname": "a/b"}),
    "ifname-dot": Case(4, good, env={"ifname": "."}),
    "ifname-dotdot": Case(4, good, env={"ifname": ".."}),
    "ifname-colon": Case(4, good, env={"ifname": "eth0:1"}),
    "ifname-space": Case(4, good, env={"ifname": "eth 0"}),
    # -- network name (7) --
    "name-slash": Case(7, top(name="a/b")),
    "name-dotdot": Case(7, top(name="..")),
    "name-empty": Case(7, top(name="")),
    "name-missing": Case(7, lambda d: dumps(without(conf(d), "name"))),
    # -- ranges (7) --
    "subnet-garbage": Case(7, ranges([{"subnet": "not-a-subnet"}])),
    "subnet-slash-32": Case(7, ranges([{"subnet": "10.1.0.0/32"}])),
    "subnet-slash-31": Case(7, ranges([{"subnet": "10.1.0.0/31"}])),
    "subnet-host-bits": Case(7, ranges([{"subnet": "10.1.0.5/24"}])),
    "overlapping-range-sets": Case(7, ranges([V4], [{"subnet": "10.1.0.0/16"}])),
    "rangeStart-outside-subnet": Case(7, ranges([dict(V4, rangeStart="10.2.0.5")])),
    "rangeStart-after-rangeEnd": Case(7, ranges([dict(V4, rangeStart="10.1.0.50", rangeEnd="10.1.0.10")])),
    "gateway-outside-subnet": Case(7, ranges([dict(V4, gateway="10.2.0.1")])),
    "mixed-families-in-a-set": Case(7, ranges([V4, {"subnet": "fd00::/64"}])),
    "empty-range-set": Case(7, ranges([])),
    "no-ranges-at-all": Case(7, ipam(ranges=[])),
    "ipRanges-garbage": Case(7, top(runtimeConfig={"ipRanges": [[{"subnet": "bad"}]]})),
    # -- dataDir (7) --
    "dataDir-relative": Case(7, ipam(dataDir="relative/ipam")),
    "dataDir-dotdot": Case(7, lambda d: dumps(conf(d, dataDir=f"{d}/../escaped"))),
    "dataDir-empty": Case(7, ipam(dataDir="")),
    # -- CNI_ARGS (4) --
    "CNI_ARGS-junk": Case(4, good, env={"args": "junk"}),
    "CNI_ARGS-a=b=c": Case(4, good, env={"args": "a=b=c"}),
    "CNI_ARGS-unknown-key": Case(4, good, env={"args": "FOO=bar"}),
    "CNI_ARGS-k8s-without-IgnoreUnknown": Case(4, good, env={"args": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}),
    "CNI_ARGS-IgnoreUnknown-maybe": Case(4, good, env={"args": "IgnoreUnknown=maybe;FOO=1"}),
    # -- requested addresses (103; 7 when not an address) --
    "requested-ip-outside-every-range": Case(103, top(runtimeConfig={"ips": ["10.9.0.5"]})),
    "requested-ip-outside-via-CNI_ARGS": Case(103, good, env={"args": "IP=192.168.7.7"}),
    "requested-ip-is-gateway": Case(103, top(args={"cni": {"ips": ["10.1.0.1"]}})),
    "requested-ip-taken": Case(103, top(runtimeConfig={"ips": ["10.1.0.2"]})),
    "two-requested-ips-in-one-set": Case(103, top(runtimeConfig={"ips": ["10.1.0.7", "10.1.0.8"]})),
    "duplicate-attachment": Case(103, good, env={"container_id": OWNER}),
    "requested-ip-garbage": Case(7, top(runtimeConfig={"ips": ["not-an-ip"]})),
    "requested-ip-garbage-via-CNI_ARGS": Case(4, good, env={"args": "IP=not-an-ip"}),
    # -- ipam shape (7) --
    "missing-ipam": Case(7, lambda d: dumps(without(conf(d), "ipam"))),
    "ipam-null": Case(7, top(ipam=None)),
    "ipam-ranges-a-string": Case(7, ipam(ranges="10.1.0.0/24")),
    "ipam-ranges-flat-list": Case(7, ipam(ranges=[{"subnet": "10.1.0.0/24"}])),
    "ipam-routes-garbage": Case(7, ipam(routes=[{"dst": "nowhere"}])),
    "ipam-missing-type": Case(7, lambda d: dumps(dict(conf(d), ipam=without(conf(d)["ipam"], "type")))),
    # -- other verbs --
    "resolvConf-missing": Case(5, ipam(resolvConf="/nonexistent/pycni/resolv.conf")),
    "DEL-with-invalid-ranges": Case(7, ranges([{"subnet": "10.1.0.0/33"}]), "DEL", {"container_id": OWNER}),
    "GC-keys-disagree": Case(7, top(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [], "cni.dev/attachments": [
        {"containerID": OWNER, "ifname": "eth0"}]}), "GC"),
    "CHECK-prevResult-garbage": Case(6, top(prevResult={"ips": [{"address": "nope"}]}), "CHECK",
                                     {"container_id": OWNER}),
}


def run_plugin(command: str, stdin: bytes, unset=(), **kw) -> PluginRun:
    if not unset:
        return exec_plugin(HL, command, stdin, **kw)
    # exec_plugin always sets CNI_COMMAND and CNI_PATH: build the environment by hand to leave them out
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1",
           "CNI_IFNAME": "eth0", "CNI_NETNS": kw.get("netns", "/var/run/netns/x"), "CNI_PATH": "/usr/lib/cni"}
    for name in unset:
        env.pop(name)
    proc = subprocess.run([plugin_exe(HL)], input=stdin, env=env, capture_output=True, timeout=60, check=False)
    return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root: files with their content, directories as None."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = b"->" + str(p.readlink()).encode()
        elif p.is_dir():
            out[rel] = None
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store holding one lease (10.1.0.2 for OWNER/eth0), made by a real ADD."""
    data_dir = tmp_path_factory.mktemp("template") / "ipam"
    res = exec_plugin(HL, "ADD", conf(data_dir), container_id=OWNER, netns="/var/run/netns/x")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.json["ips"][0]["address"] == "10.1.0.2/24"
    return data_dir


def test_enough_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, template, tmp_path, monkeypatch):
    case = CASES[name]
    work = tmp_path / "work"
    data_dir = work / "ipam"
    shutil.copytree(template, data_dir)
    monkeypatch.chdir(work)  # a relative path the plugin wrongly accepted would land in the snapshot
    before = snapshot(work)
    assert f"ipam/{NET}/10.1.0.2" in before and f"ipam/{NET}/lock" in before

    env = {"netns": "/var/run/netns/x"}
    env.update(case.env)
    res = run_plugin(case.command, case.stdin(data_dir), **env)

    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode != 0
    assert res.documents == 1, res.stdout
    doc = res.json
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}
    assert doc["code"] == case.code, doc
    assert isinstance(doc["msg"], str) and doc["msg"], doc
    assert doc["cniVersion"] in SUPPORTED, doc
    sent = _sent_version(case.stdin(data_dir))
    if sent in SUPPORTED:  # SPEC.md "Error": the error speaks the configuration's version
        assert doc["cniVersion"] == sent, doc
    assert snapshot(work) == before


def _sent_version(stdin: bytes) -> str | None:
    if len(stdin) > 1 << 20:  # not even looked at by the plugin
        return None
    try:
        return json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):  # not JSON, or not an object: no version sent
        return None
