"""The daemon's wire protocol (pycni/daemon/wire.py): the same golden bytes (tests/wire/) run against the
Python client, the C shim and the server.

tests/wire/cases.json lists
  * exchanges: a plugin process - the Python launcher, or the shim - with exactly that environment and
    stdin talks to a fake daemon on a socket of the test. The request it sends must be byte for byte
    `<name>.request` (with the deadline written as 0, pycni's version as @VERSION@ and the socket path as
    @SOCKET@); the fake daemon answers `<name>.answer` verbatim (a frame, a truncated one, nothing at
    all, or - when the case has no answer file - no answer before the client's deadline); the process
    must then exit with `expect`'s status, stdout and stderr, and send the ACK byte only when expected.
  * refusals: requests the server refuses, and the exact refusal frame it sends back.
The server decodes every exchange's request to the case's (plugin, environment, stdin), encodes every
well-formed answer to exactly its bytes, and refuses each refusal with exactly its answer - through its
own read_request/_refuse here, and through a real daemon in a node namespace (root) at the end.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import IS_ROOT

from pycni import __version__, cli, runner
from pycni.daemon import wire

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "wire"
CASES = json.loads((FIXTURES / "cases.json").read_text())
EXCHANGES = {c["name"]: c for c in CASES["exchanges"]}
REFUSALS = {c["name"]: c for c in CASES["refusals"]}
CLIENTS = ("python", "shim")


def request_body(name: str, sock: str = "@SOCKET@") -> bytes:
    return (FIXTURES / f"{name}.request").read_bytes().replace(b"@VERSION@", __version__.encode()) \
        .replace(b"@SOCKET@", sock.encode())


def answer_bytes(name: str) -> bytes | None:
    path = FIXTURES / f"{name}.answer"
    return path.read_bytes() if path.exists() else None


def case_env(case: dict, sock: str) -> dict[bytes, bytes]:
    """The process environment, as bytes (a value may hold bytes that are not UTF-8: surrogateescape)."""
    return {os.fsencode(k): os.fsencode(v.replace("@SOCKET@", sock)) for k, v in case["env"].items()}


class FakeDaemon:
    """Accepts one connection, records the request frame, sends the fixture's answer bytes, half-closes,
    and records whether the client then acknowledged (one ACK byte) or just closed."""

    def __init__(self, path: str, answer: bytes | None) -> None:
        self.answer, self.request, self.acked, self.error = answer, b"", None, None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(60)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(60)
                head = wire.recv_exact(conn, 4)
                self.request = head + wire.recv_exact(conn, int.from_bytes(head, "big"))
                if self.answer is None:  # no answer: the client gives up at its deadline and closes
                    self.acked = conn.recv(1) == wire.ACK
                    return
                conn.sendall(self.answer)
                conn.shutdown(socket.SHUT_WR)
                self.acked = conn.recv(1) == wire.ACK
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def close(self) -> None:
        self.thread.join(timeout=60)
        self.sock.close()


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="pycniw-")  # short: a unix socket path has at most 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_client(client: str, native: Path, case: dict, sock: str) -> subprocess.CompletedProcess:
    plugin = case["plugin"]
    argv = [str(native / plugin)] if client == "shim" else [sys.executable, "-I", "-c", wire.EXEC_LAUNCHER[plugin]]
    return subprocess.run(argv, input=case["stdin"].encode(), env=case_env(case, sock), capture_output=True,
                          timeout=120, check=False)


# -- the clients --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("name", sorted(EXCHANGES))
def test_golden_exchange(name, client, native_shim, sockdir):
    case = EXCHANGES[name]
    sock = os.path.join(sockdir, "d.sock")
    daemon = FakeDaemon(sock, answer_bytes(name))
    try:
        before = int(time.monotonic() * 1000)
        proc = run_client(client, native_shim, case, sock)
    finally:
        daemon.close()
    assert daemon.error is None, daemon.error
    head, body = daemon.request[:4], daemon.request[4:]
    assert int.from_bytes(head, "big") == len(body)
    deadline = re.search(rb'"deadline":(\d+),', body)
    assert deadline, body[:200]
    timeout_ms = wire.reply_timeout_ms({k: v.replace("@SOCKET@", sock) for k, v in case["env"].items()})
    assert before + timeout_ms <= int(deadline.group(1)) <= int(time.monotonic() * 1000) + timeout_ms
    sent = body[:deadline.start()] + b'"deadline":0,' + body[deadline.end():]
    assert sent == request_body(name, sock)
    expect = case["expect"]
    assert (proc.returncode, proc.stdout.decode(), proc.stderr.decode()) == (
        expect["status"], expect["stdout"].replace("@SOCKET@", sock), expect["stderr"].replace("@SOCKET@", sock))
    assert daemon.acked is expect["ack"]


@pytest.mark.parametrize("client", CLIENTS)
def test_stdin_is_read_to_one_byte_past_the_limit(client, native_shim, sockdir):
    """An oversized configuration reaches the daemon cut exactly where the verb reads it (MAX_STDIN + 1
    bytes: spec.config then refuses it as too large), from either client."""
    sock = os.path.join(sockdir, "d.sock")
    daemon = FakeDaemon(sock, b"")
    case = {"plugin": "pycni", "env": {"CNI_COMMAND": "ADD", "LANG": "C.UTF-8", "PYCNI_SOCKET": sock},
            "stdin": "x" * (wire.MAX_STDIN + 100_000)}
    try:
        proc = run_client(client, native_shim, case, sock)
    finally:
        daemon.close()
    sent = json.loads(daemon.request[4:])
    assert len(base64.b64decode(sent["stdin"])) == wire.MAX_STDIN + 1
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11


def _random_answers(n: int, seed: int = 20261130) -> list[bytes]:
    """Answer frames drawn from JSON's grammar around the protocol's keys: good and bad statuses, strings with
    every kind of escape and raw UTF-8, nested and odd values, duplicate keys, whitespace, trailing data."""
    import random

    rnd = random.Random(seed)
    texts = ["", "x", '{"cniVersion": "1.0.0"}', "caf\u00e9 \u2603 \U0001f600", "tab\tnl\ncr\rq\"b\\/", "\x7f\x1f"]
    values = [0, 1, 255, 256, -1, -0.0, 1.5, 1e2, True, None, [], {}, [1, {"a": [None]}], float("nan"), *texts]

    def pairs():
        if rnd.random() < 0.5:  # an answer, its keys in any order, maybe with more keys
            out = [("status", rnd.choice([0, 1, 7, 255])), ("stdout", rnd.choice(texts)), ("stderr", rnd.choice(texts))]
            out += [("other", rnd.choice(values))] * rnd.randint(0, 1)
            rnd.shuffle(out)
            return out
        out = []
        for key in rnd.sample(["status", "stdout", "stderr", "refused", "other", "status"], rnd.randint(0, 5)):
            if key == "status":
                out.append((key, rnd.choice([0, 1, 7, 255, *values])))
            elif key in ("stdout", "stderr"):
                out.append((key, rnd.choice(texts) if rnd.random() < 0.8 else rnd.choice(values)))
            else:
                out.append((key, rnd.choice(values)))
        return out

    frames = []
    for _ in range(n):
        items = pairs()
        sep = rnd.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
        body = "{" + sep[0].join(json.dumps(k) + sep[1] + json.dumps(v, ensure_ascii=rnd.random() < 0.5)
                                 for k, v in items) + "}"
        if rnd.random() < 0.1:
            body = rnd.choice([" ", "\n"]) + body + rnd.choice(["", " ", " x", "}"])
        if rnd.random() < 0.05:
            body = "[" + body + "]"
        frames.append(wire.frame(body.encode()))
    return frames


def test_random_answers_give_the_same_result_from_both_clients(native_shim, sockdir):
    """The shim's C JSON reading agrees with the Python client's on answers neither golden file has."""
    case = {"plugin": "pycni", "env": {"CNI_COMMAND": "VERSION", "LANG": "C.UTF-8", "PYCNI_SOCKET": ""},
            "stdin": '{"cniVersion": "0.4.0"}'}
    for i, answer in enumerate(_random_answers(30)):
        results = {}
        for client in CLIENTS:
            sock = os.path.join(sockdir, f"{i}-{client}.sock")
            daemon = FakeDaemon(sock, answer)
            try:
                proc = run_client(client, native_shim, dict(case, env=dict(case["env"], PYCNI_SOCKET=sock)), sock)
            finally:
                daemon.close()
            results[client] = (proc.returncode, proc.stdout, proc.stderr.replace(sock.encode(), b"<sock>"), daemon.acked)
        assert results["shim"] == results["python"], answer


def test_the_exchanges_cover_every_kind_of_answer():
    kinds = {name: answer_bytes(name) for name in EXCHANGES}
    assert any(a is None for a in kinds.values())  # no answer at all before the deadline
    assert b"" in kinds.values()  # closed without a byte
    statuses = {c["expect"]["status"] for c in EXCHANGES.values()}
    assert statuses == {0, 1}
    assert {"ADD", "DEL", "VERSION"} <= {c["env"]["CNI_COMMAND"] for c in EXCHANGES.values()}
    assert {c["plugin"] for c in EXCHANGES.values()} == set(wire.PLUGINS)
    tried_again = [c for c in EXCHANGES.values() if '"code": 11' in c["expect"]["stdout"]]
    assert {json.loads(c["expect"]["stdout"])["msg"] for c in tried_again} == set(wire.TRY_AGAIN_MSGS.values())


def test_try_again_is_printed_in_the_configurations_version():
    """SPEC.md "Error": cniVersion is "the protocol version in use" - the configuration's, as for every
    other error (runner.run); the latest when the configuration has none pycni speaks."""
    for version in ("0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        _, doc, _ = wire.try_again("failed", "x", json.dumps({"cniVersion": version}).encode())
        assert json.loads(doc) == {"cniVersion": version, "code": 11, "msg": wire.TRY_AGAIN_MSGS["failed"],
                                   "details": "x"}
    for stdin in (b'{"cniVersion": "9.9.9"}', b"not json", b'{"cniVersion": 4}', b""):
        assert json.loads(wire.try_again("failed", "x", stdin)[1])["cniVersion"] == "1.1.0"
    status, text = runner.run("pycni", {"CNI_COMMAND": "ADD"}, b'{"cniVersion": "0.4.0"}')
    assert status == 1 and json.loads(text)["cniVersion"] == "0.4.0"  # the same rule as any other error


# -- the server ----------------------------------------------------------------------------------------------


def _expected_request(case: dict) -> tuple[str, dict[str, str], bytes]:
    env = {k: v for k, v in case["env"].items()}
    return case["plugin"], env, case["stdin"].encode()


@pytest.mark.parametrize("name", sorted(EXCHANGES))
def test_server_reads_every_golden_request(name):
    from pycni.daemon import server
    from pycni.daemon.deadline import Deadline

    body = request_body(name)
    assert wire.decode_request(body) == (*_expected_request(EXCHANGES[name]), 0)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(wire.frame(body))
        plugin, env, stdin, _ = server.read_request(b, Deadline.after(10))
    assert (plugin, env, stdin) == _expected_request(EXCHANGES[name])


def _well_formed(name: str) -> dict | None:
    """The answer of a fixture when it is one the server could send (the others test the clients only)."""
    data = answer_bytes(name)
    if not data or int.from_bytes(data[:4], "big") != len(data) - 4:
        return None
    try:
        answer = json.loads(data[4:])
    except ValueError:
        return None
    if isinstance(answer, dict) and (set(answer) == {"refused"} or (
            set(answer) == set(wire.ANSWER_KEYS) and type(answer["status"]) is int)):
        return answer
    return None


SERVER_ANSWERS = sorted(n for n in [*EXCHANGES, *REFUSALS] if _well_formed(n))


def test_the_server_answers_include_each_kind():
    assert {"add", "add-error", "host-local-del", "env-encoding", "refused", *REFUSALS} <= set(SERVER_ANSWERS)


@pytest.mark.parametrize("name", SERVER_ANSWERS)
def test_server_writes_every_golden_answer(name):
    """Every well-formed answer of the fixtures is exactly what the server's encoder writes for it."""
    answer = _well_formed(name)
    if "refused" in answer:
        assert wire.encode_refusal(answer["refused"]) == answer_bytes(name)
    else:
        assert wire.encode_answer(answer["status"], answer["stdout"], answer["stderr"]) == answer_bytes(name)


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_server_refuses_with_the_golden_bytes(name):
    from pycni.daemon import server
    from pycni.daemon.deadline import Deadline

    data = request_body(name)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data if REFUSALS[name]["framed"] else wire.frame(data))
        with pytest.raises(wire.Refused) as refused:
            server.read_request(b, Deadline.after(10))
        server._refuse(b, str(refused.value))
        a.settimeout(10)
        got = b""
        while chunk := a.recv(65536):
            got += chunk
    assert got == answer_bytes(name)


@pytest.mark.skipif(not IS_ROOT, reason="a real daemon needs root and a node namespace")
def test_a_real_daemon_answers_the_golden_bytes(node, tmp_path):
    from test_daemon import Daemon

    d = Daemon(node, tmp_path / "run" / "pycni.sock", tmp_path / "daemon.log")
    try:
        def exchange(frame: bytes) -> bytes:
            code = ("import socket, sys\n"
                    "s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1])\n"
                    "s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)\n"
                    "out = b''\n"
                    "while c := s.recv(65536): out += c\n"
                    "sys.stdout.buffer.write(out)\n")
            argv = ["nsenter", f"--net=/var/run/netns/{node}", "--", sys.executable, "-c", code, str(d.sock)]
            return subprocess.run(argv, input=frame, capture_output=True, timeout=60, check=True).stdout

        body = request_body("env-encoding", str(d.sock)).replace(
            b'"deadline":0', b'"deadline":%d' % (int(time.monotonic() * 1000) + 60_000))
        assert exchange(wire.frame(body)) == answer_bytes("env-encoding")
        for name, case in REFUSALS.items():
            data = request_body(name)
            assert exchange(data if case["framed"] else wire.frame(data)) == answer_bytes(name), name
    finally:
        assert d.stop() == 0


# -- one definition ----------------------------------------------------------------------------------------


def test_the_shim_copies_no_protocol_constant():
    """shim.c takes every name, limit and string of the protocol from the generated wire.h."""
    source = (ROOT / "src" / "pycni" / "daemon" / "shim.c").read_text()
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)  # comments may name things
    for value in (wire.DEFAULT_SOCKET, wire.SOCKET_ENV, wire.REPLY_TIMEOUT_ENV, wire.NO_DAEMON_ENV, wire.FAULT_ENV,
                  wire.CONFIG_KEY, wire.DEBUG_ENV, *wire.PLUGINS, *wire.REQUEST_KEYS, *wire.ANSWER_KEYS,
                  wire.REFUSED_KEY, *wire.TRY_AGAIN_MSGS, wire.TIMEOUT_DETAILS, wire.CLOSED_DETAILS, wire.BAD_LENGTH,
                  wire.NOT_AN_ANSWER, "pycni.cli", "pycni.daemon", __version__):
        assert f'"{value}"' not in code, value
    for number in (wire.MAX_FRAME, wire.MAX_STDIN, "4 << 20", "1 << 20", wire.DEFAULT_REPLY_TIMEOUT_MS, "120", "500"):
        assert not re.search(rf"\b{re.escape(str(number))}\b", code), number
    header = wire.c_header()
    used = set(re.findall(r"\b(WIRE_[A-Z_]+|PYCNI_VERSION)\b", code))
    defined = set(re.findall(r"#define (\w+)", header))
    assert used <= defined, used - defined


def test_the_rest_of_pycni_agrees_with_wire():
    from pycni.spec import env

    assert wire.MAX_STDIN == env.MAX_CONFIG_BYTES == cli.MAX_STDIN
    assert wire.PLUGINS == tuple(runner.PLUGINS)
    for code in (wire.EXEC_STANDALONE % "pycni", *wire.EXEC_LAUNCHER.values(), wire.EXEC_TRY_AGAIN):
        module, name = re.fullmatch(r"from ([\w.]+) import (\w+); \2\(.*\)", code).groups()
        __import__(module)
        assert callable(getattr(sys.modules[module], name)), code


def test_reply_timeout_is_plain_decimal_seconds():
    assert wire.reply_timeout_ms({"PYCNI_DAEMON_TIMEOUT": "2.5"}) == 2500
    assert wire.reply_timeout_ms({"PYCNI_DAEMON_TIMEOUT": "0.0005"}) == wire.DEFAULT_REPLY_TIMEOUT_MS  # rounds to 0
    for bad in ("", "-1", "1e3", " 5", "5.", ".5", "0x10", "nan", "inf", "1_0", "\u0665", "86401"):
        assert wire.reply_timeout_ms({"PYCNI_DAEMON_TIMEOUT": bad}) == wire.DEFAULT_REPLY_TIMEOUT_MS, bad


def compile_shim(out: Path, python: str, header: str | None = None) -> Path:
    """shim.c built as integration/shim/build.sh does, but with a given header (e.g. another version)."""
    (out / "wire.h").write_text(header if header is not None else wire.c_header())
    subprocess.run(["cc", "-static", "-O2", "-Wall", "-Werror", f"-I{out}", f'-DPYCNI_PYTHON="{python}"', "-o",
                    str(out / "pycni"), str(ROOT / "src" / "pycni" / "daemon" / "shim.c")], check=True)
    return out / "pycni"


def test_a_shim_without_its_interpreter_says_so(tmp_path):
    """The one error the shim prints itself (no interpreter, so no configuration read): code 100, the latest
    version, a non-zero exit."""
    from pycni.spec.version import LATEST

    shim = compile_shim(tmp_path, "/nonexistent/pycni-home/bin/python")
    proc = subprocess.run([str(shim)], input=b'{"cniVersion": "0.4.0"}', capture_output=True, timeout=60, check=False,
                          env={"CNI_COMMAND": "VERSION", "PYCNI_SOCKET": str(tmp_path / "none.sock")})
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"cniVersion": LATEST, "code": 100, "msg": "cannot start the pycni plugin",
                                       "details": "/nonexistent/pycni-home/bin/python: No such file or directory"}


def test_the_header_is_valid_c(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "gcc is installed by integration/deps.sh"
    (tmp_path / "wire.h").write_text(wire.c_header())
    (tmp_path / "t.c").write_text('#include "wire.h"\nstatic const char *v[] = WIRE_NO_DAEMON_VALUES;\n'
                                  "int main(void) { return v[0] && WIRE_MAX_FRAME > WIRE_MAX_STDIN ? 0 : 1; }\n")
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(tmp_path / "t"), str(tmp_path / "t.c")], check=True)
    assert subprocess.run([str(tmp_path / "t")], check=False).returncode == 0


def test_stdin_in_a_request_is_base64_of_the_bytes():
    body = request_body("add")
    stdin = json.loads(body)["stdin"]
    assert base64.b64decode(stdin) == EXCHANGES["add"]["stdin"].encode()
