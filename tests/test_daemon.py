"""The warm path: `pycni daemon` and the exec'd shim that hands requests to it (pycni.daemon).

Every daemon here runs inside a node namespace of the test, on a socket under tmp_path (never the
default /run/pycni/pycni.sock), and is stopped with SIGTERM by its PID: the fixture checks that it
exits 0 and removes its socket.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import VENV_BIN, exec_plugin
from test_bridge_support import Env, ips_of, needs_root, ns_path

pytestmark = needs_root


class Daemon:
    def __init__(self, node: str, sock: Path, log: Path, extra: list[str] | None = None) -> None:
        self.node, self.sock, self.log = node, sock, log
        sock.parent.mkdir(mode=0o700, exist_ok=True)
        self.err = open(log, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={ns_path(node)}", "--", str(VENV_BIN / "pycni"), "daemon", "--socket", str(sock),
             *(extra or [])],
            stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("ready"), (line, log.read_text())

    @property
    def ns(self) -> str:
        """The daemon's namespaces as the protocol names them (requests must come from the same)."""
        return f"{os.stat(ns_path(self.node)).st_ino}:{os.stat('/proc/self/ns/pid').st_ino}"

    def served(self, container_id: str) -> int:
        """How many requests for this container ID the daemon has logged."""
        return sum(f" {container_id}/" in line for line in self.log.read_text().splitlines())

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()
        self.err.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def env(netns, node, tmp_path):
    return Env(netns, node, tmp_path)


@pytest.fixture
def daemon(node, tmp_path):
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log")
    yield d
    assert d.stop() == 0, d.log.read_text()
    assert not d.sock.exists(), "the daemon left its socket behind"


def warm(d: Daemon, **extra) -> dict:
    return {"extra_env": {"PYCNI_SOCKET": str(d.sock), **extra}}


COLD = {"extra_env": {"PYCNI_NO_DAEMON": "1"}}


def normalize(result: dict) -> dict:
    """An ADD result without what differs between two attachments: MACs, veth names, sandbox paths."""
    out = copy.deepcopy(result)
    for i, iface in enumerate(out.get("interfaces", [])):
        iface.pop("mac", None)
        if iface.get("sandbox"):
            iface["sandbox"] = "<netns>"
        if i == 1:
            iface["name"] = "<veth>"
    return out


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def ask(sock_path: Path, payload: bytes, raw: bool = False) -> dict | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(payload if raw else frame(payload))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data[4:]) if data else None


def request(ns: str, **over) -> bytes:
    from pycni import __version__

    req = {"proto": 1, "version": __version__, "plugin": "pycni", "ns": ns, "env": {"CNI_COMMAND": "VERSION"},
           "stdin": "eyJjbmlWZXJzaW9uIjogIjEuMC4wIn0="}
    req.update(over)
    return json.dumps(req).encode()


# -- same results either way ----------------------------------------------------------------------------


def test_every_verb_gives_the_same_answer_through_the_daemon(netns, tmp_path):
    """Two identical nodes: one runs the plugin standalone, the other through its daemon."""
    cold_node, warm_node = netns.create("pycnit-node"), netns.create("pycnit-node")
    cold, hot = Env(netns, cold_node, tmp_path / "cold"), Env(netns, warm_node, tmp_path / "warm")
    d = Daemon(warm_node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log")
    try:
        answers = {}
        for name, e, kw in (("cold", cold, COLD), ("warm", hot, warm(d))):
            conf = e.conf(version="1.1.0", ipam_type="pycni-host-local")
            pod = e.pod()
            pod.cid = "ctr-same"  # the same container ID on both nodes: results may not differ at all
            runs = {}
            add = e.run("ADD", conf, pod, **kw)
            runs["ADD"] = (add.returncode, normalize(add.json))
            check = e.run("CHECK", dict(conf, prevResult=add.json), pod, **kw)
            runs["CHECK"] = (check.returncode, check.stdout)
            status = e.run("STATUS", conf, None, **kw)
            runs["STATUS"] = (status.returncode, status.stdout)
            version = e.run("VERSION", {"cniVersion": "0.4.0"}, None, **kw)
            runs["VERSION"] = (version.returncode, version.stdout)
            again = e.run("ADD", conf, pod, **kw)  # the interface exists: an error, with the same code and text
            runs["ADD again"] = (again.returncode, again.json)
            bad = e.run("ADD", dict(conf, mtu=5), e.pod(), **kw)
            runs["bad config"] = (bad.returncode, bad.json)
            gone = e.run("ADD", conf, pod, netns="/var/run/netns/pycnit-does-not-exist", **kw)
            runs["gone netns"] = (gone.returncode, gone.json)
            old = e.run("STATUS", e.conf(version="1.0.0"), None, **kw)
            runs["STATUS 1.0.0"] = (old.returncode, old.json)
            gc = e.run("GC", dict(conf, **{"cni.dev/valid-attachments": [{"containerID": pod.cid, "ifname": "eth0"}]}),
                       None, **kw)
            runs["GC"] = (gc.returncode, gc.stdout)
            delete = e.run("DEL", conf, pod, **kw)
            runs["DEL"] = (delete.returncode, delete.stdout)
            again_del = e.run("DEL", conf, pod, netns=None, **kw)
            runs["DEL again"] = (again_del.returncode, again_del.stdout)
            runs["leases"] = e.leases()
            # the reference host-local as an exec'd delegate (found in CNI_PATH, run by the daemon)
            ref, pod2 = e.conf(version="1.0.0", ipam_type="host-local"), e.pod()
            pod2.cid = "ctr-same-2"
            add = e.run("ADD", ref, pod2, **kw)
            runs["ADD delegated"] = (add.returncode, normalize(add.json))
            del2 = e.run("DEL", ref, pod2, **kw)
            runs["DEL delegated"] = (del2.returncode, del2.stdout)
            answers[name] = runs
        assert answers["cold"] == answers["warm"]
        assert answers["warm"]["ADD"][0] == 0 and answers["warm"]["ADD again"][0] == 1
        assert answers["warm"]["ADD delegated"][0] == 0
        assert d.served("ctr-same") >= 6, "the daemon did not serve the warm node's requests"
    finally:
        assert d.stop() == 0


def test_host_local_through_the_daemon(env, daemon):
    conf = env.conf()["ipam"] | {"type": "pycni-host-local"}
    net = {"cniVersion": "1.0.0", "name": "testnet", "type": "pycni-host-local", "ipam": conf}
    pod = env.pod()
    res = env.run("ADD", net, pod, plugin="pycni-host-local", **warm(daemon))
    assert res.returncode == 0, res.stderr
    assert res.json["ips"][0]["address"] == "10.77.0.2/24"
    assert env.run("DEL", net, pod, plugin="pycni-host-local", **warm(daemon)).returncode == 0
    assert daemon.served(pod.cid) == 2 and env.leases() == []


def test_logs_of_a_request_reach_the_plugins_stderr(env, daemon):
    res = env.run("ADD", env.conf(mtu=5), env.pod(), **warm(daemon))
    assert res.returncode == 1 and res.json["code"] == 7
    assert "pycni failed: code 7" in res.stderr  # logged in the daemon, printed by the shim


# -- fallback -------------------------------------------------------------------------------------------


def test_no_daemon_or_a_stale_socket_falls_back_to_standalone(env, tmp_path):
    conf, pod = env.conf(), env.pod()
    missing = {"extra_env": {"PYCNI_SOCKET": str(tmp_path / "nothing-here.sock")}}
    assert ips_of(env.add(conf, pod, **missing)) == ["10.77.0.2/24"]
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: connect() is refused
    env.delete(conf, pod, extra_env={"PYCNI_SOCKET": str(stale)})
    assert env.leases() == []


def test_a_daemon_of_another_version_is_not_used(daemon):
    answer = ask(daemon.sock, request(daemon.ns, version="0.0.0-other"))
    assert "refused" in answer and "version" in answer["refused"]
    answer = ask(daemon.sock, request(daemon.ns, proto=99))
    assert "refused" in answer and "protocol" in answer["refused"]


def test_a_plugin_in_another_namespace_is_not_served(env, daemon):
    """The daemon works on its own network namespace: a plugin run elsewhere must not use it."""
    answer = ask(daemon.sock, request(f"1:{os.stat('/proc/self/ns/pid').st_ino}"))
    assert "refused" in answer and "namespaces" in answer["refused"]
    res = exec_plugin("pycni", "VERSION", {"cniVersion": "1.0.0"}, extra_env={"PYCNI_SOCKET": str(daemon.sock)})
    assert res.returncode == 0 and json.loads(res.stdout)["cniVersion"] == "1.0.0"  # ran standalone, here
    assert daemon.log.read_text().count("namespaces") == 2


def test_config_key_and_env_turn_the_handoff_off(env, daemon):
    pod = env.pod()
    conf = env.conf(pycniDaemon=False)
    env.add(conf, pod, **warm(daemon))
    env.delete(conf, pod, **warm(daemon, PYCNI_NO_DAEMON="1"))
    assert daemon.served(pod.cid) == 0
    env.add(env.conf(), pod, **warm(daemon))
    assert daemon.served(pod.cid) == 1


def test_daemon_restart_is_picked_up(node, env, tmp_path):
    """Stop the daemon: the shim falls back; start it again: the shim uses it again."""
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "d1.log")
    conf = env.conf()
    pod = env.pod()
    env.add(conf, pod, **warm(d))
    assert d.stop() == 0
    env.delete(conf, pod, **warm(d))  # no daemon now
    d2 = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "d2.log")
    try:
        env.add(conf, pod, **warm(d2))
        assert d2.served(pod.cid) == 1
        env.delete(conf, pod, **warm(d2))
    finally:
        assert d2.stop() == 0


# -- robustness -----------------------------------------------------------------------------------------


def test_concurrent_requests(env, daemon):
    conf = env.conf(subnet="10.77.0.0/24")
    pods = [env.pod() for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: env.run("ADD", conf, p, **warm(daemon)), pods))
    assert all(r.returncode == 0 for r in results), [r.stdout for r in results if r.returncode]
    ips = [r.json["ips"][0]["address"] for r in results]
    assert len(set(ips)) == len(pods)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        dels = list(pool.map(lambda p: env.run("DEL", conf, p, **warm(daemon)), pods))
    assert all(r.returncode == 0 for r in dels)
    assert env.leases() == []
    assert not [n for n in env.links() if n.startswith("veth")]
    assert sum(daemon.served(p.cid) for p in pods) == 2 * len(pods)


def test_standalone_and_daemon_share_the_store_lock(env, daemon):
    """Half the ADDs run standalone, half in the daemon, at once, on one store: no address twice."""
    conf = env.conf()
    pods = [env.pod() for _ in range(10)]
    modes = [COLD if i % 2 else warm(daemon) for i in range(len(pods))]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda pm: env.run("ADD", conf, pm[0], **pm[1]), zip(pods, modes)))
    assert all(r.returncode == 0 for r in results), [r.stdout for r in results if r.returncode]
    assert len({r.json["ips"][0]["address"] for r in results}) == len(pods)
    assert len(env.leases()) == len(pods)
    for pod, mode in zip(pods, modes):
        env.delete(conf, pod, **mode)
    assert env.leases() == []


@pytest.mark.parametrize("payload", [
    b"\x00\x00\x00\x05hello",  # not JSON
    b"\xff\xff\xff\xff",  # an absurd length
    b"\x00\x00\x00\x00",  # an empty frame
    b"\x00\x00\x01\x00{\"truncated",  # closed mid-frame
    b"GET / HTTP/1.0\r\n\r\n",  # somebody else's protocol
    frame(b"[1, 2, 3]"),
    frame(json.dumps({"proto": 1}).encode()),
])
def test_garbage_does_not_kill_the_daemon(daemon, payload):
    try:
        answer = ask(daemon.sock, payload, raw=True)
    except OSError:
        answer = None
    assert answer is None or "refused" in answer
    assert daemon.proc.poll() is None
    answer = ask(daemon.sock, request(daemon.ns))
    assert json.loads(answer["stdout"])["cniVersion"] == "1.0.0"


def test_bad_fields_are_refused(daemon):
    for over in ({"plugin": "bash"}, {"env": {"A": 1}}, {"env": []}, {"stdin": "***"}, {"stdin": 5}):
        answer = ask(daemon.sock, request(daemon.ns, **over))
        assert "refused" in answer, over
    assert daemon.proc.poll() is None


def test_socket_is_root_only_and_non_root_peers_are_refused(node, tmp_path):
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="pycnit-sock-", dir="/tmp"))  # traversable by nobody, unlike tmp_path
    daemon = Daemon(node, top / "run" / "pycni.sock", tmp_path / "daemon.log")
    try:
        assert (daemon.sock.stat().st_mode & 0o777) == 0o600
        assert (daemon.sock.parent.stat().st_mode & 0o777) == 0o700
        os.chmod(top, 0o755)
        code = (
            "import os, socket, sys, json\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10)\n"
            "try:\n"
            "    s.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "    print('EACCES'); sys.exit(0)\n"
            "p = sys.argv[2].encode(); s.sendall(len(p).to_bytes(4, 'big') + p)\n"
            "d = b''\n"
            "while c := s.recv(65536): d += c\n"
            "print(d[4:].decode())\n"
        )

        def as_nobody() -> str:
            proc = subprocess.run([sys.executable, "-c", code, str(daemon.sock), request(daemon.ns).decode()],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.strip()

        assert as_nobody() == "EACCES"  # the directory and file modes keep non-root out
        os.chmod(daemon.sock.parent, 0o755)  # open the door (test only) to reach the SO_PEERCRED check
        os.chmod(daemon.sock, 0o666)
        assert json.loads(as_nobody()) == {"refused": "peer uid 65534 is not root"}
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
        shutil.rmtree(top, ignore_errors=True)


def test_a_second_daemon_on_the_same_socket_refuses_to_start(node, daemon, tmp_path):
    proc = subprocess.run(["nsenter", f"--net={ns_path(node)}", "--", str(VENV_BIN / "pycni"), "daemon", "--socket",
                           str(daemon.sock)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "another daemon" in proc.stderr
    assert daemon.proc.poll() is None and daemon.sock.exists()


def test_sigterm_waits_for_running_requests(env, daemon):
    """SIGTERM while ADDs run: they complete (and answer), then the daemon exits 0 (fixture)."""
    conf = env.conf()
    pods = [env.pod() for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(env.run, "ADD", conf, p, **warm(daemon)) for p in pods]
        time.sleep(0.05)
        os.kill(daemon.proc.pid, 15)
        results = [f.result() for f in futures]
    assert all(r.returncode == 0 for r in results), [r.stdout for r in results]
    assert daemon.proc.wait(timeout=30) == 0
    for pod in pods:  # the daemon is gone: DEL runs standalone
        env.delete(conf, pod, **warm(daemon))
    assert env.leases() == []


# -- the shim is cheap ----------------------------------------------------------------------------------


def test_the_shim_imports_nothing_heavy(env, daemon):
    pod = env.pod()
    argv = ["nsenter", f"--net={ns_path(env.node)}", "--", sys.executable, "-X", "importtime", "-c",
            "from pycni.cli import main_bridge; main_bridge()"]
    proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod.cid,
                "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0", "CNI_PATH": f"{VENV_BIN}:/usr/lib/cni",
                "PYCNI_SOCKET": str(daemon.sock)}
    proc = subprocess.run(argv, input=json.dumps(env.conf()).encode(), env=proc_env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.77.0.2/24"
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "import time:" in line}
    heavy = {m for m in imported if m.split(".")[0] in ("pydantic", "pydantic_core", "pyroute2", "socket", "json",
                                                        "asyncio", "dataclasses", "typing", "logging")}
    assert not heavy, heavy
    assert not any(m.startswith("pycni.") and m not in ("pycni.cli", "pycni.daemon", "pycni.daemon.client")
                   for m in imported), imported
    assert daemon.served(pod.cid) == 1
    env.delete(env.conf(), pod, **warm(daemon))


# -- the optional native shim ---------------------------------------------------------------------------


@pytest.fixture
def native(tmp_path) -> Path:
    """src/pycni/daemon/shim.c built for this venv, installed as pycni and pycni-host-local."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    from pycni import __version__

    out = tmp_path / "native"
    out.mkdir()
    src = Path(__file__).resolve().parent.parent / "src" / "pycni" / "daemon" / "shim.c"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(out / "pycni"), str(src),
                    f'-DPYCNI_PYTHON="{sys.executable}"', f'-DPYCNI_VERSION="{__version__}"'], check=True)
    (out / "pycni-host-local").symlink_to("pycni")
    return out


def run_native(native: Path, name: str, command: str, conf, pod=None, node: str | None = None, **env) -> tuple:
    proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                "CNI_PATH": f"{VENV_BIN}:/usr/lib/cni", **env}
    if pod is not None:
        proc_env.update(CNI_CONTAINERID=pod.cid, CNI_NETNS=pod.path, CNI_IFNAME=pod.ifname)
    argv = [str(native / name)]
    if node:
        argv = ["nsenter", f"--net={ns_path(node)}", "--", *argv]
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run(argv, input=data, env=proc_env, capture_output=True, timeout=60, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_native_shim_gives_the_python_answers(env, daemon, native):
    conf = env.conf()
    sock = {"PYCNI_SOCKET": str(daemon.sock)}
    for stdin in (b'{"cniVersion": "0.4.0"}', b"not json", "{\"cniVersion\": \"1.0.0\", \"x\": \"\u00e9\u2603\U0001f600\"}".encode()):
        rc, out, _ = run_native(native, "pycni", "VERSION", stdin, **sock)
        py = exec_plugin("pycni", "VERSION", stdin, extra_env=sock)
        assert (rc, out) == (py.returncode, py.stdout)
    pod = env.pod()
    rc, out, _ = run_native(native, "pycni", "ADD", conf, pod, env.node, **sock)
    assert rc == 0, out
    result = json.loads(out)
    assert ips_of(result) == ["10.77.0.2/24"]
    rc, out, err = run_native(native, "pycni", "ADD", conf, pod, env.node, **sock)  # exists: an error
    assert rc == 1 and json.loads(out)["code"] == 101 and "pycni failed: code 101" in err
    rc, out, _ = run_native(native, "pycni", "CHECK", dict(conf, prevResult=result), pod, env.node, **sock)
    assert (rc, out) == (0, "")
    rc, out, _ = run_native(native, "pycni", "DEL", conf, pod, env.node, **sock)
    assert (rc, out) == (0, "")
    assert daemon.served(pod.cid) == 4
    assert env.leases() == []


def test_native_shim_falls_back_to_the_python_plugin(env, daemon, native, tmp_path):
    conf, pod = env.conf(), env.pod()
    missing = {"PYCNI_SOCKET": str(tmp_path / "none.sock")}
    rc, out, _ = run_native(native, "pycni", "ADD", conf, pod, env.node, **missing)  # stdin reaches Python
    assert rc == 0 and ips_of(json.loads(out)) == ["10.77.0.2/24"]
    rc, out, _ = run_native(native, "pycni", "DEL", conf, pod, env.node, PYCNI_SOCKET=str(daemon.sock),
                            PYCNI_NO_DAEMON="1")
    assert (rc, out) == (0, "")
    assert daemon.served(pod.cid) == 0
    # a daemon of another version refuses: the shim runs the verb itself
    other = tmp_path / "other"
    other.mkdir()
    src = Path(__file__).resolve().parent.parent / "src" / "pycni" / "daemon" / "shim.c"
    subprocess.run(["cc", "-O2", "-o", str(other / "pycni-host-local"), str(src),
                    f'-DPYCNI_PYTHON="{sys.executable}"', '-DPYCNI_VERSION="0.0.0-other"'], check=True)
    net = {"cniVersion": "1.0.0", "name": "testnet", "type": "pycni-host-local", "ipam": conf["ipam"]}
    rc, out, _ = run_native(other, "pycni-host-local", "ADD", net, pod, env.node, PYCNI_SOCKET=str(daemon.sock))
    assert rc == 0 and json.loads(out)["ips"][0]["address"] == "10.77.0.3/24"  # round robin: after .2
    assert daemon.served(pod.cid) == 0 and "refused a request" in daemon.log.read_text()
    rc, out, _ = run_native(native, "pycni-host-local", "DEL", net, pod, env.node, PYCNI_SOCKET=str(daemon.sock))
    assert (rc, out) == (0, "") and daemon.served(pod.cid) == 1
    assert env.leases() == []
