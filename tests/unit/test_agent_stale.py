"""The agent's stale-lease sweep (pycni.agent.stale) and its CRI client (pycni.agent.cri), without root:
the client against a fake gRPC-over-h2c server on a unix socket, the sweep with a fake runtime and a
fake CNI DEL; plus the readiness file. A real containerd answers the same client in the kind e2e."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time

import pytest

from pycni.agent import conflist, cri, stale
from pycni.agent.main import _mark_ready


def _pb_varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _pb_field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _pb_varint(num << 3) + _pb_varint(value)
    return _pb_varint(num << 3 | 2) + _pb_varint(len(value)) + value


def sandbox_pb(sid: str, state: int, name: str = "p") -> bytes:
    meta = _pb_field(1, name.encode()) + _pb_field(3, b"default")
    return (_pb_field(1, sid.encode()) + _pb_field(2, meta) + _pb_field(3, state) + _pb_field(4, 1700000000)
            + _pb_field(7, b"runc"))


def test_parse_sandboxes_reads_id_and_state_and_skips_other_fields():
    msg = _pb_field(1, sandbox_pb("aaa", cri.READY)) + _pb_field(1, sandbox_pb("bbb", cri.NOT_READY, "x" * 300))
    assert cri.parse_sandboxes(msg) == [cri.Sandbox("aaa", cri.READY), cri.Sandbox("bbb", cri.NOT_READY)]
    assert cri.parse_sandboxes(b"") == []
    with pytest.raises(cri.CRIError):
        cri.parse_sandboxes(_pb_field(1, sandbox_pb("aaa", 0))[:-3])  # truncated


def test_hpack_integer_encoding():  # RFC 7541 C.1: 10 and 1337 with a 5-bit prefix; ours uses 7 bits
    assert cri._hpack_int(10, 5) == b"\x0a"
    assert cri._hpack_int(1337, 5) == b"\x1f\x9a\x0a"
    assert cri._hpack_int(126) == b"\x7e" and cri._hpack_int(127) == b"\x7f\x00"


def _frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


class FakeRuntime:
    """Reads the client's preface and frames, checks the request, answers as `mode` says."""

    def __init__(self, path: str, mode: str, message: bytes = b""):
        self.path, self.mode, self.message = path, mode, message
        self.seen: dict = {}
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.srv.accept()
        with conn:
            f = conn.makefile("rb")
            assert f.read(24) == cri.PREFACE
            conn.sendall(_frame(cri.SETTINGS, 0, 0) + _frame(cri.PING, 0, 0, b"12345678"))
            frames = []
            while not any(t == cri.DATA and fl & cri.END_STREAM for t, fl, _, _ in frames):
                head = f.read(9)
                size = int.from_bytes(head[:3], "big")
                frames.append((head[3], head[4], int.from_bytes(head[5:], "big"), f.read(size)))
            self.seen["frames"] = frames
            body = self.message
            if self.mode == "ok":
                conn.sendall(_frame(cri.HEADERS, cri.END_HEADERS, 1, b"\x88")
                             + _frame(cri.DATA, cri.PADDED, 1, b"\x02" + b"\x00" + struct.pack(">I", len(body))
                                      + body + b"\x00\x00")
                             + _frame(cri.HEADERS, cri.END_HEADERS | cri.END_STREAM, 1, b"\x00"))
            elif self.mode == "error":  # gRPC Trailers-Only: headers and END_STREAM, no message
                conn.sendall(_frame(cri.HEADERS, cri.END_HEADERS | cri.END_STREAM, 1, b"\x88"))
            elif self.mode == "reset":
                conn.sendall(_frame(cri.RST_STREAM, 0, 1, struct.pack(">I", 2)))
            # wait for the client's acknowledgements before closing
            time.sleep(0.2)
            self.seen["after"] = conn.recv(4096)


def test_list_pod_sandboxes_speaks_h2c_grpc(tmp_path):
    msg = _pb_field(1, sandbox_pb("0123abcd", cri.READY)) + _pb_field(1, sandbox_pb("dead", cri.NOT_READY))
    rt = FakeRuntime(str(tmp_path / "cri.sock"), "ok", msg)
    assert cri.list_pod_sandboxes(rt.path, timeout=5) == [cri.Sandbox("0123abcd", 0), cri.Sandbox("dead", 1)]
    rt.thread.join(5)
    kinds = [(t, fl, s) for t, fl, s, _ in rt.seen["frames"]]
    assert kinds[0] == (cri.SETTINGS, 0, 0) and (cri.HEADERS, cri.END_HEADERS, 1) in kinds
    headers = next(p for t, _, _, p in rt.seen["frames"] if t == cri.HEADERS)
    assert b":path" in headers and cri.METHOD.encode() in headers and b"application/grpc" in headers
    data = next(p for t, _, _, p in rt.seen["frames"] if t == cri.DATA)
    assert data == b"\x00\x00\x00\x00\x00"  # an uncompressed, empty ListPodSandboxRequest
    # the server's SETTINGS and PING are acknowledged
    assert _frame(cri.SETTINGS, cri.ACK, 0) in rt.seen["after"]
    assert _frame(cri.PING, cri.ACK, 0, b"12345678") in rt.seen["after"]


@pytest.mark.parametrize("mode,msg", [("error", "with an error"), ("reset", "reset the call")])
def test_list_pod_sandboxes_failures(tmp_path, mode, msg):
    rt = FakeRuntime(str(tmp_path / "cri.sock"), mode)
    with pytest.raises(cri.CRIError, match=msg):
        cri.list_pod_sandboxes(rt.path, timeout=5)


def test_no_runtime(tmp_path):
    with pytest.raises(cri.CRIError, match="cannot connect"):
        cri.list_pod_sandboxes(str(tmp_path / "none.sock"), timeout=1)


# -- the sweep ---------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    conf = conflist.render(["10.244.1.0/24"], data_dir=str(tmp_path / "networks"))
    d = tmp_path / "networks" / conf["name"]
    d.mkdir(parents=True)
    (d / "lock").write_text("")
    (d / "last_reserved_ip.0").write_text("10.244.1.9")
    old = time.time() - 3600

    def lease(ip, cid, ifname="eth0", mtime=old):
        (d / ip).write_text(f"{cid}\r\n{ifname}")
        os.utime(d / ip, (mtime, mtime))
    return conf, d, lease


def test_sweep_releases_only_old_leases_of_unknown_sandboxes(store):
    conf, d, lease = store
    lease("10.244.1.2", "live")
    lease("10.244.1.3", "notready")
    lease("10.244.1.4", "gone", "net1")
    lease("10.244.1.5", "young-unknown", mtime=time.time() - 5)
    calls = []

    def run(plugin, env, stdin):
        calls.append((plugin, env, json.loads(stdin)))
        os.unlink(d / "10.244.1.4")
        return 0, ""
    out = stale.reconcile(conf, "/x.sock", "/opt/cni/bin", 120,
                          list_sandboxes=lambda p: [cri.Sandbox("live", 0), cri.Sandbox("notready", 1)], run=run)
    assert out.errors == [] and len(out.released) == 1 and "10.244.1.4" in out.released[0]
    (plugin, env, netconf), = calls
    assert plugin == "pycni"
    assert env["CNI_COMMAND"] == "DEL" and env["CNI_CONTAINERID"] == "gone" and env["CNI_IFNAME"] == "net1"
    assert env["CNI_NETNS"] == "" and env["CNI_PATH"] == "/opt/cni/bin"
    assert netconf["name"] == conf["name"] and netconf["cniVersion"] == conf["cniVersion"]
    assert netconf["type"] == "pycni" and netconf["ipam"]["dataDir"] == conf["plugins"][0]["ipam"]["dataDir"]
    assert sorted(os.listdir(d)) == ["10.244.1.2", "10.244.1.3", "10.244.1.5", "last_reserved_ip.0", "lock"]


def test_sweep_releases_nothing_when_the_runtime_lists_nothing_or_fails(store):
    conf, _d, lease = store
    lease("10.244.1.2", "a")

    def run(*a):
        raise AssertionError("no DEL may run")
    out = stale.reconcile(conf, "/x.sock", "/b", 0, list_sandboxes=lambda p: [], run=run)
    assert out.released == [] and "lists no sandbox" in out.errors[0]

    def broken(p):
        raise cri.CRIError("down")
    out = stale.reconcile(conf, "/x.sock", "/b", 0, list_sandboxes=broken, run=run)
    assert out.released == [] and "down" in out.errors[0]


def test_sweep_reports_a_failed_delete(store):
    conf, _d, lease = store
    lease("10.244.1.7", "gone")
    out = stale.reconcile(conf, "/x.sock", "/b", 0, list_sandboxes=lambda p: [cri.Sandbox("x", 0)],
                          run=lambda *a: (1, '{"code": 5, "msg": "boom"}'))
    assert out.released == [] and "DEL failed" in out.errors[0] and "boom" in out.errors[0]


def test_sweep_without_a_store_does_not_ask_the_runtime(tmp_path):
    conf = conflist.render(["10.244.1.0/24"], data_dir=str(tmp_path / "nothing"))

    def never(p):
        raise AssertionError("runtime asked")
    assert stale.reconcile(conf, "/x.sock", "/b", 0, list_sandboxes=never) == stale.Outcome()


def test_ready_file(tmp_path):
    f = str(tmp_path / "ready")
    _mark_ready(f, True)
    assert os.path.exists(f)
    _mark_ready(f, False)
    assert not os.path.exists(f)
    _mark_ready(f, False)  # already absent: fine
    _mark_ready("", True)  # off


def test_release_execs_the_installed_plugin_like_a_runtime(tmp_path, store):
    """The DEL runs CNI_PATH/pycni in its own process (the node's installed version, its own logging), with the
    CNI environment and the network configuration on stdin."""
    conf, d, lease = store
    lease("10.244.1.8", "gone", "eth0")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record"
    (bindir / "pycni").write_text(f"#!/bin/sh\n{{ env | grep ^CNI_ | sort; cat; }} > {record}\n"
                                  f"rm -f {d}/10.244.1.8\n")
    (bindir / "pycni").chmod(0o755)
    out = stale.reconcile(conf, "/x.sock", str(bindir), 120, list_sandboxes=lambda p: [cri.Sandbox("x", 0)])
    assert out.errors == [] and len(out.released) == 1
    text = record.read_text()
    assert "CNI_COMMAND=DEL\n" in text and "CNI_CONTAINERID=gone\n" in text and "CNI_NETNS=\n" in text
    assert f"CNI_PATH={bindir}\n" in text and json.loads(text[text.index("{"):])["type"] == "pycni"
    assert not (d / "10.244.1.8").exists()
    # a plugin that fails (or is missing) is reported, the lease stays
    lease("10.244.1.9", "gone2")
    out = stale.reconcile(conf, "/x.sock", str(tmp_path / "nowhere"), 120,
                          list_sandboxes=lambda p: [cri.Sandbox("x", 0)])
    assert out.released == [] and "DEL failed" in out.errors[0] and (d / "10.244.1.9").exists()
