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
from test_bridge_support import CNI_PATH, Env, ips_of, needs_root, ns_path

pytestmark = needs_root


class Daemon:
    def __init__(self, node: str, sock: Path, log: Path, extra: list[str] | None = None, *,
                 prefix: tuple[str, ...] = ()) -> None:
        self.node, self.sock, self.log = node, sock, log
        sock.parent.mkdir(mode=0o700, exist_ok=True)
        self.err = open(log, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [*prefix, "nsenter", f"--net={ns_path(node)}", "--", str(VENV_BIN / "pycni"), "daemon", "--socket", str(sock),
             "--cni-path", CNI_PATH, *(extra or [])],
            stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("ready"), (line, log.read_text())

    @property
    def pid(self) -> int:
        """The daemon's own PID (the Popen is nsenter's, which execs it: the same process)."""
        return self.proc.pid

    def served(self, container_id: str) -> int:
        """How many requests for this container ID the daemon has logged."""
        return sum(f" {container_id}/" in line for line in self.log.read_text().splitlines())

    def refusals(self) -> list[str]:
        return [line.split("refused a request: ", 1)[1] for line in self.log.read_text().splitlines()
                if "refused a request: " in line]

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


_ASK = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[2]))
s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read())
data = b""
while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
if data and json.loads(data[4:]).get("status") is not None:
    try:
        s.sendall(b"\\x06")  # the acknowledgement (only an ADD's is awaited)
    except OSError:
        pass
sys.stdout.write(data[4:].decode())
"""


def ask(d: Daemon, payload: bytes, raw: bool = False, *, wrap: tuple[str, ...] = (), in_node: bool = True,
        timeout: float = 30) -> dict | None:
    """Send one request from a process in the daemon's namespaces (the daemon reads them from the
    kernel, not from the request); `wrap` runs that process differently (fewer capabilities...),
    in_node=False leaves it in the test's own network namespace."""
    argv = [*wrap, sys.executable, "-c", _ASK, str(d.sock), str(timeout)]
    if in_node:
        argv = ["nsenter", f"--net={ns_path(d.node)}", "--", *argv]
    proc = subprocess.run(argv, input=payload if raw else frame(payload), capture_output=True, timeout=timeout + 30,
                          check=False)
    if proc.returncode != 0:
        raise OSError(proc.stderr.decode()[-500:])
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def request(**over) -> bytes:
    from pycni import __version__

    req = {"proto": 2, "version": __version__, "plugin": "pycni", "deadline": int((time.monotonic() + 60) * 1000),
           "env": {"CNI_COMMAND": "VERSION"}, "stdin": "eyJjbmlWZXJzaW9uIjogIjEuMC4wIn0="}
    req.update(over)
    return json.dumps(req).encode()


# -- same results either way ----------------------------------------------------------------------------


def test_every_verb_gives_the_same_answer_in_every_mode(netns, tmp_path, native_shim):
    """Four identical nodes, one per way of running the plugin: the Python launcher standalone, the Python
    launcher with its daemon, the native shim with its daemon, and the native shim with no daemon (its
    fallback execs the interpreter). Every verb, error and lease must be the same in all four."""
    python, shim = str(VENV_BIN / "pycni"), str(native_shim / "pycni")
    modes = {"python standalone": (python, False), "python + daemon": (python, True),
             "shim + daemon": (shim, True), "shim fallback": (shim, False)}
    daemons: list[Daemon] = []
    try:
        answers = {}
        for name, (exe, with_daemon) in modes.items():
            node = netns.create("pycnit-node")
            e = Env(netns, node, tmp_path / name.replace(" ", "-"))
            if with_daemon:
                daemons.append(Daemon(node, tmp_path / f"run-{len(daemons)}" / "pycni.sock", tmp_path / f"d{len(daemons)}.log"))
                kw = warm(daemons[-1])
            else:
                kw = {"extra_env": {"PYCNI_SOCKET": str(tmp_path / "no-daemon.sock")}}
            conf = e.conf(version="1.1.0", ipam_type="pycni-host-local")
            pod = e.pod()
            pod.cid = "ctr-same"  # the same container ID on every node: results may not differ at all
            runs = {}
            add = e.run("ADD", conf, pod, plugin=exe, **kw)
            runs["ADD"] = (add.returncode, normalize(add.json))
            check = e.run("CHECK", dict(conf, prevResult=add.json), pod, plugin=exe, **kw)
            runs["CHECK"] = (check.returncode, check.stdout)
            status = e.run("STATUS", conf, None, plugin=exe, **kw)
            runs["STATUS"] = (status.returncode, status.stdout)
            version = e.run("VERSION", {"cniVersion": "0.4.0"}, None, plugin=exe, **kw)
            runs["VERSION"] = (version.returncode, version.stdout)
            again = e.run("ADD", conf, pod, plugin=exe, **kw)  # the interface exists: an error, with the same code and text
            runs["ADD again"] = (again.returncode, again.json)
            bad = e.run("ADD", dict(conf, mtu=5), e.pod(), plugin=exe, **kw)
            runs["bad config"] = (bad.returncode, bad.json)
            garbage = e.run("ADD", b"\xff not json", e.pod(), plugin=exe, **kw)
            runs["not JSON"] = (garbage.returncode, garbage.json)
            gone = e.run("ADD", conf, pod, netns="/var/run/netns/pycnit-does-not-exist", plugin=exe, **kw)
            runs["gone netns"] = (gone.returncode, gone.json)
            old = e.run("STATUS", e.conf(version="1.0.0"), None, plugin=exe, **kw)
            runs["STATUS 1.0.0"] = (old.returncode, old.json)
            gc = e.run("GC", dict(conf, **{"cni.dev/valid-attachments": [{"containerID": pod.cid, "ifname": "eth0"}]}),
                       None, plugin=exe, **kw)
            runs["GC"] = (gc.returncode, gc.stdout)
            delete = e.run("DEL", conf, pod, plugin=exe, **kw)
            runs["DEL"] = (delete.returncode, delete.stdout)
            again_del = e.run("DEL", conf, pod, netns=None, plugin=exe, **kw)
            runs["DEL again"] = (again_del.returncode, again_del.stdout)
            runs["leases"] = e.leases()
            # the reference host-local as an exec'd delegate (found in CNI_PATH, run by the daemon)
            ref, pod2 = e.conf(version="1.0.0", ipam_type="host-local"), e.pod()
            pod2.cid = "ctr-same-2"
            add = e.run("ADD", ref, pod2, plugin=exe, **kw)
            runs["ADD delegated"] = (add.returncode, normalize(add.json))
            del2 = e.run("DEL", ref, pod2, plugin=exe, **kw)
            runs["DEL delegated"] = (del2.returncode, del2.stdout)
            answers[name] = runs
        first = answers["python standalone"]
        for name, runs in answers.items():
            assert runs == first, name
        assert first["ADD"][0] == 0 and first["ADD again"][0] == 1 and first["not JSON"][1]["code"] == 6
        assert first["ADD delegated"][0] == 0
        for d in daemons:
            assert d.served("ctr-same") >= 6, "a daemon did not serve its node's requests"
    finally:
        for d in daemons:
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
    answer = ask(daemon, request(version="0.0.0-other"))
    assert "refused" in answer and "version" in answer["refused"]
    answer = ask(daemon, request(proto=1))
    assert "refused" in answer and "protocol" in answer["refused"]


def test_a_plugin_in_another_namespace_is_not_served(env, daemon):
    """The daemon reads the peer's namespaces from the kernel: a request from another network
    namespace is refused whatever it says about itself (the old protocol's "ns" claim included)."""
    claim = f"{os.stat(ns_path(daemon.node)).st_ino}:{os.stat('/proc/self/ns/pid').st_ino}"
    answer = ask(daemon, request(ns=claim), in_node=False)
    assert "refused" in answer and "net namespaces" in answer["refused"], answer
    res = exec_plugin("pycni", "VERSION", {"cniVersion": "1.0.0"}, extra_env={"PYCNI_SOCKET": str(daemon.sock)})
    assert res.returncode == 0 and json.loads(res.stdout)["cniVersion"] == "1.0.0"  # ran standalone, here
    assert sum("net namespaces" in r for r in daemon.refusals()) == 2


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
        answer = ask(daemon, payload, raw=True)
    except OSError:
        answer = None
    assert answer is None or "refused" in answer
    assert daemon.proc.poll() is None
    answer = ask(daemon, request())
    assert json.loads(answer["stdout"])["cniVersion"] == "1.0.0"


def test_bad_fields_are_refused(daemon):
    for over in ({"plugin": "bash"}, {"plugin": {"CNI_COMMAND": "ADD"}}, {"plugin": ["pycni"]}, {"env": {"A": 1}}, {"env": []}, {"stdin": "***"}, {"stdin": 5},
                 {"deadline": "soon"}, {"deadline": None}, {"deadline": -1}, {"deadline": 1.5}, {"deadline": True}):
        answer = ask(daemon, request(**over))
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
            proc = subprocess.run([sys.executable, "-c", code, str(daemon.sock), request().decode()],
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
    # json is imported (its public API, not the private _json scanner: issue 14); the rest stays out
    heavy = {m for m in imported if m.split(".")[0] in ("pydantic", "pydantic_core", "pyroute2", "socket",
                                                        "asyncio", "dataclasses", "typing", "logging")}
    assert not heavy, heavy
    assert not any(m.startswith("pycni.") and m not in ("pycni.cli", "pycni.daemon", "pycni.daemon.wire", "pycni.daemon.client")
                   for m in imported), imported
    assert daemon.served(pod.cid) == 1
    env.delete(env.conf(), pod, **warm(daemon))


# -- the native shim (what make install, the bundle and the DaemonSet install) ------------------------------


@pytest.fixture
def native(native_shim) -> Path:
    return native_shim


def test_the_native_shim_is_static(native):
    ldd = subprocess.run(["ldd", str(native / "pycni")], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    head = (native / "pycni").read_bytes()[:4]
    assert head == b"\x7fELF"


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
    # a daemon of another version refuses: the shim runs the verb itself (a shim whose header says 0.0.0-other)
    from test_wire import compile_shim

    from pycni import __version__
    from pycni.daemon import wire

    other = tmp_path / "other"
    other.mkdir()
    header = wire.c_header().replace(f'PYCNI_VERSION "{__version__}"', 'PYCNI_VERSION "0.0.0-other"')
    compile_shim(other, sys.executable, header).rename(other / "pycni-host-local")
    net = {"cniVersion": "1.0.0", "name": "testnet", "type": "pycni-host-local", "ipam": conf["ipam"]}
    rc, out, _ = run_native(other, "pycni-host-local", "ADD", net, pod, env.node, PYCNI_SOCKET=str(daemon.sock))
    assert rc == 0 and json.loads(out)["ips"][0]["address"] == "10.77.0.3/24"  # round robin: after .2
    assert daemon.served(pod.cid) == 0 and "refused a request" in daemon.log.read_text()
    rc, out, _ = run_native(native, "pycni-host-local", "DEL", net, pod, env.node, PYCNI_SOCKET=str(daemon.sock))
    assert (rc, out) == (0, "") and daemon.served(pod.cid) == 1
    assert env.leases() == []


# -- the trust boundary (issue 15, docs/security.md) -----------------------------------------------------

NO_CAPS = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")  # uid 0, empty capability sets


def run_in_node(e: Env, wrap: tuple[str, ...], command: str, conf: dict, pod, **extra) -> tuple[int, dict | None, str]:
    """A plugin run in the node namespace through `wrap` (e.g. with every capability dropped)."""
    penv = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": pod.cid,
            "CNI_NETNS": pod.path, "CNI_IFNAME": pod.ifname, "CNI_PATH": CNI_PATH, **extra}
    argv = ["nsenter", f"--net={ns_path(e.node)}", "--", *wrap, str(VENV_BIN / "pycni")]
    proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=penv, capture_output=True, timeout=120,
                          check=False)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, doc, proc.stderr.decode()


def test_a_peer_without_the_daemons_capabilities_is_refused(env, daemon):
    """uid 0 with every capability dropped gets EPERM standalone - and through the daemon it must not
    get more: refused (capabilities read from /proc/<peer>/status), the verb runs standalone and fails."""
    answer = ask(daemon, request(), wrap=NO_CAPS)
    assert "refused" in answer and "CAP_NET_ADMIN" in answer["refused"] and "CAP_SYS_ADMIN" in answer["refused"]
    before = set(env.links())
    pod = env.pod()
    status, doc, _ = run_in_node(env, NO_CAPS, "ADD", env.conf(), pod, PYCNI_SOCKET=str(daemon.sock))
    assert status == 1 and doc["code"] != 0, doc
    assert daemon.served(pod.cid) == 0 and any("lacks capabilities" in r for r in daemon.refusals())
    assert set(env.links()) == before and env.links(pod.name).keys() == {"lo"} and env.leases() == []


def test_delegates_run_only_from_the_daemons_cni_path(env, daemon, tmp_path):
    """A request whose CNI_PATH names a directory outside the daemon's --cni-path allowlist is refused:
    its ipam.type script runs standalone, as the caller, never as the daemon."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "own-ipam"
    script.write_text("#!/bin/sh\necho \"$PPID\" > \"$(dirname \"$0\")/ran-by\"\n"
                      "echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"no\"}'\nexit 1\n")
    script.chmod(0o755)
    conf = dict(env.conf(), ipam={"type": "own-ipam"})
    pod = env.pod()
    res = env.run("ADD", conf, pod, path=f"{bindir}:{CNI_PATH}", **warm(daemon))
    assert res.returncode == 1 and res.json["code"] == 7, res.stdout
    assert daemon.served(pod.cid) == 0 and any("allowlist" in r for r in daemon.refusals())
    assert int((bindir / "ran-by").read_text()) != daemon.pid  # exec'd by the standalone plugin
    assert not [n for n in env.links() if n.startswith("veth")]


def test_daemon_refuses_an_unsafe_or_relative_allowlist(node, tmp_path):
    writable = tmp_path / "open"
    writable.mkdir()
    writable.chmod(0o777)
    for value, why in ((str(writable), "writable by nobody else"), ("relative/bin", "not an absolute path")):
        proc = subprocess.run(["nsenter", f"--net={ns_path(node)}", "--", str(VENV_BIN / "pycni"), "daemon",
                               "--socket", str(tmp_path / "run" / "s.sock"), "--cni-path", value],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1 and why in proc.stderr, proc.stderr
        assert not (tmp_path / "run" / "s.sock").exists()


def test_a_daemon_in_another_mount_namespace_serves_nobody(env, tmp_path):
    """Issue 15: with the daemon in its own mount namespace (a container), dataDir resolved to another
    store and a warm and a standalone ADD got the same address. The daemon now compares the mount
    namespace too (read from the kernel): it refuses, the client runs standalone, addresses differ."""
    env.ipam_dir.mkdir(parents=True)
    private = ("unshare", "--mount", "--propagation", "private", "--",
               "sh", "-c", 'mount -t tmpfs pycnit-private "$0" && exec "$@"', str(env.ipam_dir))
    d = Daemon(env.node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log", prefix=private)
    try:
        conf = env.conf()
        a, b = env.pod(), env.pod()
        ip_a = ips_of(env.add(conf, a, **warm(d)))
        ip_b = ips_of(env.add(conf, b, **COLD))
        assert ip_a != ip_b, (ip_a, ip_b)
        assert d.served(a.cid) == 0 and any("mnt" in r for r in d.refusals())
        env.delete(conf, a, **warm(d))
        env.delete(conf, b, **COLD)
        assert env.leases() == []
    finally:
        assert d.stop() == 0


# -- deadlines and clients that are gone (issue 15) --------------------------------------------------------


@pytest.fixture
def slow_ipam(tmp_path) -> Path:
    """A directory holding `slow-ipam`: host-local, after touching <dir>/started.<cid> and sleeping
    $SLOW seconds (read from CNI_ARGS... no: from a file, so the daemon's environment is irrelevant)."""
    bindir = tmp_path / "slowbin"
    bindir.mkdir()
    script = bindir / "slow-ipam"
    script.write_text(f"#!/bin/sh\ntouch {bindir}/started.$CNI_CONTAINERID\n"
                      f"[ \"$CNI_COMMAND\" = ADD ] && sleep $(cat {bindir}/delay 2>/dev/null || echo 0)\n"
                      "exec /usr/lib/cni/host-local \"$@\"\n")
    script.chmod(0o755)
    return bindir


def _wait_for(path: Path, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{what} did not happen"
        time.sleep(0.05)


def test_a_request_whose_client_gave_up_is_never_run(env, node, tmp_path, slow_ipam):
    """Issue 15 item 4: the daemon is stalled; an ADD times out with code 11 and the runtime's DEL
    runs standalone and finds nothing. The queued ADD must then not run: no veth, lease or pod
    interface for a sandbox the runtime thinks has no network. A client killed after sending is the same."""
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log",
               ["--workers", "1", "--cni-path", f"{slow_ipam}:{CNI_PATH}"])
    try:
        (slow_ipam / "delay").write_text("8")
        conf = env.conf()
        slow_conf = dict(conf, ipam=dict(conf["ipam"], type="slow-ipam"))
        path = f"{slow_ipam}:{CNI_PATH}"
        staller = env.pod()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            stalled = pool.submit(env.run, "ADD", slow_conf, staller, path=path, **warm(d))
            _wait_for(slow_ipam / f"started.{staller.cid}", "the stalling ADD")  # it holds the only slot
            late, killed = env.pod(), env.pod()
            res = env.run("ADD", conf, late, path=path, **warm(d, PYCNI_DAEMON_TIMEOUT="2"))
            assert res.returncode == 1 and res.json["code"] == 11, res.stdout
            env.delete(conf, late, path=path, **COLD)  # the runtime's clean-up: nothing to find yet
            client = subprocess.Popen(
                ["nsenter", f"--net={ns_path(node)}", "--", str(VENV_BIN / "pycni")], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": killed.cid,
                     "CNI_NETNS": killed.path, "CNI_IFNAME": "eth0", "CNI_PATH": path, "PYCNI_SOCKET": str(d.sock)})
            client.stdin.write(json.dumps(conf).encode())
            client.stdin.close()
            time.sleep(1.5)  # it connects and sends its request, then waits for the slot
            client.kill()
            client.wait()
            assert stalled.result().returncode == 0
        deadline = time.monotonic() + 60
        while sum(("deadline" in r or "gone" in r) for r in d.refusals()) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("deadline has passed" in r for r in d.refusals()), d.refusals()
        assert d.served(late.cid) == 0 and d.served(killed.cid) == 0
        for pod in (late, killed):
            assert env.links(pod.name).keys() == {"lo"}, "a request nobody waited for ran"
        assert env.leases() == sorted(ip.split("/")[0] for ip in ips_of(stalled.result().json))
        env.delete(slow_conf, staller, path=path, **warm(d))
        assert env.leases() == [] and not [n for n in env.links() if n.startswith("veth")]
    finally:
        assert d.stop() == 0


def test_an_add_whose_answer_nobody_takes_is_undone(env, node, tmp_path, slow_ipam):
    """The ADD started in time but its client gave up before the answer (code 11): the daemon gets
    no acknowledgement and undoes the ADD with a DEL - the runtime believes it failed."""
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log",
               ["--cni-path", f"{slow_ipam}:{CNI_PATH}"])
    try:
        (slow_ipam / "delay").write_text("4")
        conf = env.conf()
        slow_conf = dict(conf, ipam=dict(conf["ipam"], type="slow-ipam"))
        pod = env.pod()
        res = env.run("ADD", slow_conf, pod, path=f"{slow_ipam}:{CNI_PATH}", **warm(d, PYCNI_DAEMON_TIMEOUT="2"))
        assert res.returncode == 1 and res.json["code"] == 11, res.stdout
        end = time.monotonic() + 60
        while f"pycni DEL {pod.cid}/" not in d.log.read_text():  # the undo, logged once it is done
            assert time.monotonic() < end, d.log.read_text()
            time.sleep(0.1)
        assert env.leases() == [] and not [n for n in env.links() if n.startswith("veth")]
        assert env.links(pod.name).keys() == {"lo"}
    finally:
        assert d.stop() == 0


_TRICKLE = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"\\x00\\x00\\x01\\x00{")  # a frame of 256 bytes announced, its first byte sent
print("connected", flush=True)
s.settimeout(1.0)
for _ in range(120):  # one byte a second, for up to two minutes: never a whole request
    try:
        data = s.recv(65536)
        print("answer", data[4:].decode(errors="replace"), flush=True)
        break
    except socket.timeout:
        pass
    try:
        s.send(b" ")
    except OSError:
        print("closed", flush=True)
        break
"""


def _tricklers(d: Daemon, n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen(["nsenter", f"--net={ns_path(d.node)}", "--", sys.executable, "-c", _TRICKLE, str(d.sock)],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "connected"
    return procs


def test_slow_clients_hold_no_slot_and_do_not_delay_sigterm(env, node, tmp_path):
    """Issue 15 item 5: as many connections as --workers, each trickling one byte a second, held every
    slot (real requests got code 11) and the daemon ignored SIGTERM. Now a slot is taken only once a
    whole request is in, reading has one deadline per request, and SIGTERM cuts what is being read."""
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log", ["--workers", "2"])
    tricklers = []
    try:
        tricklers = _tricklers(d, 4)
        pod = env.pod()
        res = env.run("ADD", env.conf(), pod, **warm(d, PYCNI_DAEMON_TIMEOUT="60"))
        assert res.returncode == 0, res.stdout
        assert d.served(pod.cid) == 1  # served by the daemon while every trickler is still connected
        assert all(p.poll() is None for p in tricklers)
        env.delete(env.conf(), pod, **warm(d))
        os.kill(d.pid, 15)
        assert d.proc.wait(timeout=60) == 0
        outs = [p.communicate(timeout=60)[0] for p in tricklers]
        assert not any("did not arrive in time" in o for o in outs), outs  # cut by the stop, not the timeout
    finally:
        for p in tricklers:
            if p.poll() is None:
                p.kill()
                p.wait()
        d.stop()


def test_a_trickling_request_is_cut_after_the_read_deadline(daemon):
    (p,) = _tricklers(daemon, 1)
    out, _ = p.communicate(timeout=120)
    assert "did not arrive in time" in out, out  # one deadline for the whole request, not per recv
    assert any("did not arrive in time" in r for r in daemon.refusals())


def test_one_inotify_instance_in_the_daemon(env, daemon):
    """Issue 15 item 7: ADD+DEL on 30 networks left 30 inotify instances in the daemon. Now one per
    worker process (each has its lease cache), however many networks, and no watch outlives its directory."""
    pod = env.pod()
    for n in range(30):
        net = {"cniVersion": "1.0.0", "name": f"inet{n}", "type": "pycni-host-local",
               "ipam": {"type": "pycni-host-local", "dataDir": str(env.ipam_dir), "ranges": [[{"subnet": "10.55.0.0/24"}]]}}
        assert env.run("ADD", net, pod, plugin="pycni-host-local", **warm(daemon)).returncode == 0
        assert env.run("DEL", net, pod, plugin="pycni-host-local", **warm(daemon)).returncode == 0
    assert daemon.served(pod.cid) == 60
    instances = {pid: fds for pid, fds in _inotify_instances(daemon.pid).items() if fds}
    assert instances and all(len(fds) == 1 for fds in instances.values()), instances
    assert len(instances) <= _state(daemon)["processes"], instances  # workers only, one each
    import shutil

    shutil.rmtree(env.ipam_dir)
    for pid, (fd,) in instances.items():
        with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
            assert not [line for line in fh if line.startswith("inotify wd:")]  # released with the directories


def _tree(pid: int) -> list[int]:
    """pid and its live descendants (the daemon, its zygote and its worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{task}/children") as fh:
                todo.extend(int(c) for c in fh.read().split())
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _inotify_instances(pid: int) -> dict[int, list[str]]:
    return {p: [f for f in os.listdir(f"/proc/{p}/fd") if os.readlink(f"/proc/{p}/fd/{f}") == "anon_inode:inotify"]
            for p in _tree(pid)}


def _state(d: Daemon) -> dict:
    from pycni import runstate

    return runstate.read(runstate.daemon_file(str(d.sock)))


# -- worker processes (issue 13) -------------------------------------------------------------------------------


@pytest.fixture
def probe_ipam(tmp_path) -> Path:
    """A directory holding `probe-ipam`, an IPAM delegate that records who ran it and with whom: its
    parent (the worker process that exec'd it) in ppids, `overlap` when another request of the same
    container is running, `together` when a request of another container runs at the same time (it
    waits up to 30 s for one, then 1 s more), and that blocks while <dir>/hold exists. It then fails
    with code 7: only the run matters."""
    bindir = tmp_path / "probebin"
    bindir.mkdir()
    script = bindir / "probe-ipam"
    script.write_text(
        "#!/bin/sh\n"
        "d=$(dirname \"$0\")\n"
        "echo \"$PPID\" >> \"$d/ppids\"\n"
        "mkdir \"$d/running-$CNI_CONTAINERID\" 2>/dev/null || echo \"overlap $CNI_CONTAINERID\" >> \"$d/log\"\n"
        "i=0\n"
        "while [ \"$CNI_COMMAND\" = ADD ] && [ $i -lt 300 ]; do\n"
        "  if [ \"$(ls -d \"$d\"/running-* | wc -l)\" -ge 2 ]; then echo \"together $CNI_CONTAINERID\" >> \"$d/log\"; sleep 1; break; fi\n"
        "  sleep 0.1; i=$((i+1))\n"
        "done\n"
        "i=0\n"
        "while [ -e \"$d/hold\" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
        "rmdir \"$d/running-$CNI_CONTAINERID\"\n"
        "echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"probe\"}'\n"
        "exit 1\n")
    script.chmod(0o755)
    return bindir


def test_containers_run_in_parallel_processes_and_one_container_in_order(env, node, tmp_path, probe_ipam):
    """Requests of different containers run at the same time, in different worker processes (every CPU
    is used); a second request of a container that is being served waits for the first."""
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log",
               ["--processes", "2", "--cni-path", f"{probe_ipam}:{CNI_PATH}"])
    try:
        assert _state(d)["processes"] == 2
        conf = env.conf()
        probe = dict(conf, ipam=dict(conf["ipam"], type="probe-ipam"))
        path = f"{probe_ipam}:{CNI_PATH}"
        first, other = env.pod(), env.pod()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            a1 = pool.submit(env.run, "ADD", probe, first, path=path, **warm(d))
            _wait_for(probe_ipam / f"running-{first.cid}", "the first ADD")
            b = pool.submit(env.run, "ADD", probe, other, path=path, **warm(d))
            a2 = pool.submit(env.run, "DEL", probe, first, path=path, **warm(d))
            runs = [a1.result(), b.result(), a2.result()]
        assert [r.json["code"] for r in runs[:2]] == [7, 7], [r.stdout for r in runs]
        log = (probe_ipam / "log").read_text().split("\n")
        assert f"together {first.cid}" in log and f"together {other.cid}" in log, log
        assert not [line for line in log if line.startswith("overlap")], log
        assert len(set((probe_ipam / "ppids").read_text().split())) >= 2  # two worker processes ran them
        assert d.served(first.cid) == 2 and d.served(other.cid) == 1
        helpers = set(_tree(d.pid)) - {d.pid}
        assert len(helpers) == 3  # the zygote and two workers
    finally:
        assert d.stop() == 0
    deadline = time.monotonic() + 30
    while [p for p in helpers if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in helpers if _alive(p)], "worker processes outlived the daemon"


def test_a_worker_that_dies_is_replaced_and_its_request_answered(env, node, tmp_path, probe_ipam):
    """A worker process killed in the middle of a verb: its request gets code 11 (try again; the runtime
    DELs and retries), a new worker takes its place, and the daemon goes on serving."""
    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log",
               ["--processes", "2", "--cni-path", f"{probe_ipam}:{CNI_PATH}"])
    try:
        conf = env.conf()
        probe = dict(conf, ipam=dict(conf["ipam"], type="probe-ipam"))
        path = f"{probe_ipam}:{CNI_PATH}"
        (probe_ipam / "hold").touch()
        victim = env.pod()
        workers_before = set(_tree(d.pid)) - {d.pid}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(env.run, "DEL", probe, victim, path=path, **warm(d))
            _wait_for(probe_ipam / f"running-{victim.cid}", "the request")
            worker = int((probe_ipam / "ppids").read_text().split()[0])
            assert worker in workers_before
            os.kill(worker, 9)
            res = pending.result()
        (probe_ipam / "hold").unlink()
        assert res.returncode == 1 and res.json["code"] == 11, res.stdout
        assert "worker process" in d.log.read_text()
        pod = env.pod()
        env.add(conf, pod, **warm(d))  # served (by a worker), not standalone
        env.delete(conf, pod, **warm(d))
        assert d.served(pod.cid) == 2
        deadline = time.monotonic() + 30
        while len(set(_tree(d.pid)) - {d.pid}) != len(workers_before) and time.monotonic() < deadline:
            time.sleep(0.1)
        after = set(_tree(d.pid)) - {d.pid}
        assert len(after) == len(workers_before) and worker not in after  # zygote + 2 workers again
    finally:
        assert d.stop() == 0


def test_the_daemon_cpu_benchmark_runs_and_cleans_up():
    """bench/daemon_cpu.py (the daemon's CPU per request, issue 13) in a few rounds: it reports every
    row, and leaves no namespace behind."""
    script = Path(__file__).resolve().parent.parent / "bench" / "daemon_cpu.py"
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    proc = subprocess.run([sys.executable, str(script), "--rounds", "2", "--leases", "0,20", "--interleave", "20",
                           "--burst", "4", "--concurrency", "2"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    for row in ("ADD 0 leases", "DEL 0 leases", "ADD 20 leases", "burst ADD 4@2", "burst DEL 4@2"):
        assert report[row]["cpu_ms"] > 0, (row, report)
    assert report["ADD interleaved, 20 leases: cpu_ms"] > 0 and report["memory"]["pss_total_mb"] > 0
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())
    assert not {n for n in after - before if n.startswith("pycnid-")}, "the benchmark left namespaces behind"
