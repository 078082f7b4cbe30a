"""The pycni daemon: `pycni daemon [--socket PATH]` serves CNI requests with everything already loaded.

Everything is imported once at start (pydantic models built, pyroute2 loaded), so a request costs
only its own work: the exec'd plugin (pycni.daemon.client) forwards (plugin, environment, stdin),
and the daemon answers with exactly what `pycni.runner.run` returns - the same function the standalone
plugin runs, so results, errors and exit codes are identical either way. This process handles the
connections; the verbs run in worker processes forked at start (workers.py), one per CPU by default.

  * Access (peer.py, docs/security.md): the socket is 0600 in a 0700 directory, and a peer is served
    only when the kernel says it is root, holds every capability the daemon has, and lives in the
    daemon's user, mount, network, PID and time namespaces; delegates are exec'd only from the
    --cni-path allowlist (cni_path.py). Anything else is refused: the client runs the verb itself.
  * Concurrency: one thread per connection (at most 4 x --workers; more are refused at once), at
    most --workers verbs running at a time, spread over --processes worker processes (so they use
    every CPU) - a slot is taken only once the whole request has been read, so a client that trickles
    its request holds no slot; requests of one container run one after the other, in order; the rest
    is serialised where it must be (the IPAM store's flock, the firewall lock: both across processes);
    each worker thread keeps its own netlink sockets, and `Pod` switches only the calling thread
    into a pod netns (setns(2) is per thread).
  * Deadlines (deadline.py): a request must arrive whole within READ_TIMEOUT; it is dropped unrun
    when its client's deadline has passed or the client is gone; an ADD whose answer the client
    does not acknowledge is undone with a DEL.
  * Robustness: a request that cannot be read or parsed is refused, a verb that raises becomes
    its CNI error document (runner.run never raises), and nothing a client sends can stop the daemon.
  * Versions: a request from another pycni version or protocol is refused, and the client then
    runs the verb itself - an upgraded plugin never talks to an old daemon's code.
  * SIGTERM / SIGINT: stop accepting, refuse every request not yet running (those still being
    read included), let running requests finish (up to --grace seconds), remove the socket, exit 0.
  * Paths: CNI_NETNS, dataDir and CNI_PATH resolve in the daemon's mount namespace, which is the
    caller's; delegated plugins run from the daemon with the caller's environment (Request.environ).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time

from .. import __version__, logfmt, runner, runstate
from . import cni_path, peer, wire, workers
from .deadline import ACK_TIMEOUT, READ_TIMEOUT, Deadline, Expired, acknowledged, client_gone
from .wire import DEFAULT_SOCKET, MAX_FRAME, SOCKET_ENV, Refused

SLOT_POLL = 0.2  # seconds between looks at the client and the stop flag while waiting for a slot
log = logging.getLogger("pycnid")  # not under "pycni": those handlers belong to requests


def preload() -> None:
    """Import and warm up everything a verb needs, so no request pays for it (the workers are forked
    from this state)."""
    import pycni.bridge.links
    import pycni.bridge.masquerade
    import pycni.bridge.netns
    import pycni.bridge.probes
    import pycni.bridge.sysctl
    import pycni.bridge.verbs
    import pycni.context
    import pycni.ipam.store
    import pycni.ipam.verbs
    import pycni.spec.config
    import pycni.spec.request
    import pycni.spec.result  # noqa: F401
    from pycni.bridge import netlink

    netlink.messages()  # pyroute2's message classes (the channel's) and IPRoute (the rare operations)
    netlink.iproute_class()
    runner.run("pycni", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.1.0"}', stderr=io.StringIO())


def _recv_exact(conn: socket.socket, n: int, deadline: Deadline) -> bytes:
    try:
        return deadline.recv_exact(conn, n)
    except (EOFError, Expired) as exc:
        raise Refused(str(exc)) from None


def read_request(conn: socket.socket, deadline: Deadline) -> tuple[str, dict[str, str], bytes, Deadline]:
    """One framed request, validated (wire.decode_request): (plugin, environment, stdin, the client's
    deadline). Refused on anything odd, or when the whole request has not arrived by `deadline`."""
    try:
        size = wire.body_size(_recv_exact(conn, wire.HEADER_BYTES, deadline))
    except wire.FrameError as exc:
        raise Refused(str(exc)) from None
    plugin, env, stdin, until = wire.decode_request(_recv_exact(conn, size, deadline))
    return plugin, env, stdin, Deadline.from_ms(until)


class Server:
    def __init__(self, path: str, pool: workers.Pool, workers: int = 32, grace: float = 30.0,
                 allowed: tuple[str, ...] = (cni_path.DEFAULT,)) -> None:
        self.path = path
        self.pool = pool  # the worker processes that run the verbs
        self.grace = grace
        self.allowed = allowed  # the CNI_PATH allowlist (cni_path.py)
        self.slots = threading.BoundedSemaphore(workers)  # verbs running
        self.max_connections = 4 * workers
        self.connections = threading.BoundedSemaphore(self.max_connections)  # threads, reading or waiting too
        self.stopping = threading.Event()
        self.active = 0
        self.served = 0
        self.lock = threading.Lock()
        self.reading: set[socket.socket] = set()  # connections whose request is still arriving
        self.containers: dict[str, list] = {}  # container ID -> [its lock, requests holding or awaiting it]
        self.sock: socket.socket | None = None
        self.view = peer.own_view()  # what a peer must match (request threads return to these namespaces)
        self._inode: tuple[int, int] | None = None
        self.metrics = None  # pycni.metrics.Metrics when --metrics-address is given
        self.json_logs = False

    # -- socket -------------------------------------------------------------------------------------

    def bind(self) -> None:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        st = os.stat(directory)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SystemExit(f"pycni daemon: {directory} must be owned by uid {os.geteuid()} and writable "
                             "by nobody else")
        if os.path.lexists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: nobody listens on it
            else:
                raise SystemExit(f"pycni daemon: another daemon is listening on {self.path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.listen(128)
        sock.settimeout(0.5)  # wake up to see a stop request
        self.sock = sock

    def unlink(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:  # only our own socket, never a successor's
                os.unlink(self.path)
        except OSError:
            pass

    # -- serving ------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        assert self.sock is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                time.sleep(0.05)
                continue
            self._spawn(conn)
        self._refuse_backlog()

    def _spawn(self, conn: socket.socket) -> None:
        if not self.connections.acquire(blocking=False):  # never block the accept loop
            log.warning("refused a request: %d connections already open", self.max_connections)
            _refuse(conn, "the daemon is busy")
            conn.close()
            return
        with self.lock:
            self.active += 1
        try:
            threading.Thread(target=self._handle, args=(conn,), name="pycni-request", daemon=True).start()
        except RuntimeError as exc:  # cannot start a thread: answer nothing, the client retries
            log.error("cannot start a request thread: %s", exc)
            conn.close()
            self._done()

    def _refuse_backlog(self) -> None:
        """Stopping: remove the socket first (a new client then finds no daemon and runs the verb
        itself), then answer every connection already queued with a refusal - closing the listening
        socket with them queued would reset them, and their clients could not tell that nothing was
        done - and close."""
        assert self.sock is not None
        self.unlink()
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            conn.setblocking(True)
            self._spawn(conn)  # _handle refuses: self.stopping is set
        self.sock.close()

    def _done(self) -> None:
        with self.lock:
            self.active -= 1
            self.served += 1
        self.connections.release()

    def _read(self, conn: socket.socket) -> tuple[str, dict[str, str], bytes, Deadline]:
        """Authorise the peer, then read its request - all of it within READ_TIMEOUT."""
        peer.authorise(conn, self.view)
        with self.lock:
            self.reading.add(conn)
        try:
            if self.stopping.is_set():  # stop() may have run before we were listed
                raise Refused("the daemon is stopping")
            plugin, env, stdin, deadline = read_request(conn, Deadline.after(READ_TIMEOUT))
        finally:
            with self.lock:
                self.reading.discard(conn)
        if env.get("CNI_COMMAND") != "VERSION":  # every other verb may exec a delegate from CNI_PATH
            cni_path.require_allowed(env.get("CNI_PATH", ""), self.allowed)
        return plugin, env, stdin, deadline

    def _slot(self, conn: socket.socket, deadline: Deadline) -> None:
        """Wait for a free slot while the request is still wanted; Refused when it no longer is."""
        while not self.slots.acquire(timeout=SLOT_POLL):
            self._still_wanted(conn, deadline)
        try:
            self._still_wanted(conn, deadline)
        except Refused:
            self.slots.release()
            raise

    def _claim(self, container_id: str, conn: socket.socket, deadline: Deadline) -> str | None:
        """Requests of one container run one at a time, in arrival order of their claims (a DEL must
        not overtake the ADD it undoes); those of different containers in parallel. Waits while the
        request is still wanted; returns what _unclaim takes."""
        if not container_id:
            return None  # STATUS, GC, VERSION: no container to keep apart
        with self.lock:
            entry = self.containers.setdefault(container_id, [threading.Lock(), 0])
            entry[1] += 1
        try:
            while not entry[0].acquire(timeout=SLOT_POLL):
                self._still_wanted(conn, deadline)
        except BaseException:
            self._forget(container_id)
            raise
        return container_id

    def _unclaim(self, container_id: str | None) -> None:
        if container_id is not None:
            self.containers[container_id][0].release()
            self._forget(container_id)

    def _forget(self, container_id: str) -> None:
        with self.lock:
            entry = self.containers[container_id]
            entry[1] -= 1
            if entry[1] == 0:
                del self.containers[container_id]

    def _still_wanted(self, conn: socket.socket, deadline: Deadline) -> None:
        if self.stopping.is_set():
            raise Refused("the daemon is stopping")
        if deadline.passed():
            raise Refused("the client's deadline has passed")
        if client_gone(conn):
            raise Refused("the client is gone")

    def _handle(self, conn: socket.socket) -> None:
        try:
            container = None
            try:
                plugin, env, stdin, deadline = self._read(conn)
                container = self._claim(env.get("CNI_CONTAINERID", ""), conn, deadline)
                self._slot(conn, deadline)
            except Refused as exc:
                log.warning("refused a request: %s", exc)
                _refuse(conn, str(exc))
                self._unclaim(container)
                return
            except (OSError, TimeoutError) as exc:
                log.warning("could not read a request: %s", exc)
                self._unclaim(container)
                return
            try:
                status, text, logs = self._run(plugin, env, stdin)
                conn.settimeout(ACK_TIMEOUT)  # a client that is there reads its answer at once
                try:
                    conn.sendall(wire.encode_answer(status, text, logs))
                    delivered = True
                except OSError:
                    delivered = False
                if status == 0 and env.get("CNI_COMMAND") == "ADD" and not (delivered and acknowledged(conn)):
                    self._undo_add(plugin, env, stdin)
            finally:
                self.slots.release()
                self._unclaim(container)
        except Exception as exc:  # noqa: BLE001 - a request never takes the daemon down
            log.error("request failed: %s: %s", type(exc).__name__, exc)
        finally:
            conn.close()
            self._done()

    def _run(self, plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, str, str]:
        start = time.perf_counter()
        probe = self.metrics.begin(plugin, env, stdin) if self.metrics is not None else None
        answer = self.pool.run(plugin, env, stdin)
        if answer is None:
            log.error("%s %s %s/%s: the worker process died during the request", plugin, env.get("CNI_COMMAND"),
                      env.get("CNI_CONTAINERID", "-"), env.get("CNI_IFNAME", "-"))
            answer = wire.try_again("failed", "its worker process died", stdin)
        status, text, logs = answer
        if probe is not None:
            self.metrics.end(probe, status, text)
        ms = (time.perf_counter() - start) * 1000
        log.info("%s %s %s/%s: exit %d in %.1f ms", plugin, env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID", "-"),
                 env.get("CNI_IFNAME", "-"), status, ms,
                 extra=_log_fields(env, stdin, status, text, ms) if self.json_logs else None)
        return status, text, logs

    def _undo_add(self, plugin: str, env: dict[str, str], stdin: bytes) -> None:
        """The client of this ADD gave up or died before it had the answer: its runtime believes the
        attachment failed (and may already have run its DEL), so nothing of it may stay."""
        log.warning("%s ADD %s/%s: the client did not take the answer; undoing it", plugin,
                    env.get("CNI_CONTAINERID", "-"), env.get("CNI_IFNAME", "-"))
        status, text, _ = self._run(plugin, dict(env, CNI_COMMAND="DEL"), stdin)
        if status != 0:
            log.error("undoing the ADD failed: %s", text)

    def stop(self) -> None:
        """Stop serving: refuse what is still being read (a trickling client must not delay the exit)."""
        self.stopping.set()
        with self.lock:
            reading = list(self.reading)
        for conn in reading:
            try:
                conn.shutdown(socket.SHUT_RD)  # its recv() returns at once; the thread refuses it
            except OSError:
                pass

    def drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            with self.lock:
                if self.active == 0:
                    return
            time.sleep(0.02)
        log.warning("stopping with %d request(s) still running", self.active)


def _refuse(conn: socket.socket, why: str) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(wire.encode_refusal(why))
    except OSError:
        return
    _drain(conn)  # closing with unread input would reset the connection before the answer is read


def _drain(conn: socket.socket) -> None:
    """Half-close, then read and drop what the client still sends (bounded), so that close() sends
    a FIN after our answer rather than a reset that could destroy it."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.5)
        left = MAX_FRAME + 4
        while left > 0:
            chunk = conn.recv(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass


def _log_fields(env: dict[str, str], stdin: bytes, status: int, text: str, ms: float) -> dict:
    """The request's fields for a JSON log line (pycni.logfmt)."""
    try:
        network = json.loads(stdin).get("name")
    except (ValueError, AttributeError):
        network = None
    try:
        code = 0 if status == 0 else json.loads(text).get("code")
    except (ValueError, AttributeError):
        code = None
    return logfmt.fields(env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID"), network if isinstance(network, str) else None,
                         env.get("CNI_IFNAME"), code, ms)


MAX_DEFAULT_PROCESSES = 16  # each worker holds its own copy of the warm interpreter (~30 MB)


def default_processes() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_PROCESSES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pycni daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET,
                        help=f"unix socket to listen on (default ${SOCKET_ENV} or {DEFAULT_SOCKET})")
    parser.add_argument("--workers", type=int, default=32, help="requests served at the same time")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="worker processes that run the verbs (default: one per CPU, at most "
                             f"{MAX_DEFAULT_PROCESSES}: %(default)s)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to let requests finish on SIGTERM")
    parser.add_argument("--cni-path", default=os.environ.get("CNI_PATH") or cni_path.DEFAULT,
                        help="the only directories delegated plugins are exec'd from (default $CNI_PATH or "
                             f"{cni_path.DEFAULT}); a request naming others is refused (docs/security.md)")
    parser.add_argument("--log-level", default=os.environ.get("PYCNI_LOG_LEVEL", "INFO"))
    logfmt.add_argument(parser)
    from .. import metrics

    metrics.add_arguments(parser)
    args = parser.parse_args(argv)
    logfmt.basic_config(args.log_level, args.log_format)
    if os.geteuid() != 0:
        print("pycni daemon: must run as root", file=sys.stderr)
        return 1
    try:
        allowed = cni_path.parse(args.cni_path)
    except ValueError as exc:
        print(f"pycni daemon: --cni-path: {exc}", file=sys.stderr)
        return 1
    problems = cni_path.unsafe(allowed)
    if problems:
        print(f"pycni daemon: --cni-path: {'; '.join(problems)}", file=sys.stderr)
        return 1
    os.umask(0o022)
    sys.stdout = sys.stderr  # a stray print in a verb must not go anywhere near a client
    preload()
    slots, processes = max(1, args.workers), max(1, args.processes)
    pool = workers.Pool(processes, threads=-(-slots // processes))  # forks: before any thread or socket
    server = Server(os.path.abspath(args.socket), pool, workers=slots, grace=args.grace, allowed=allowed)
    server.bind()
    server.json_logs = args.log_format == "json"
    try:
        server.metrics = metrics.start(args, server.path, slots)
    except (OSError, ValueError) as exc:
        server.unlink()
        pool.close()
        print(f"pycni daemon: metrics: {exc}", file=sys.stderr)
        return 1
    state_file = runstate.daemon_file(server.path)
    runstate.write(state_file, {"version": __version__, "pid": os.getpid(), "started": time.time(),
                                "workers": slots, "processes": processes, "socket": server.path,
                                "metrics": server.metrics.address if server.metrics else ""})
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    log.info("pycni %s daemon listening on %s (pid %d)", __version__, server.path, os.getpid())
    print(f"ready {server.path}", file=sys.__stdout__, flush=True)  # for supervisors and tests
    try:
        server.serve_forever()
    finally:
        server.drain()
        server.unlink()
        pool.close()
        if server.metrics is not None:
            server.metrics.stop()
        if (runstate.read(state_file) or {}).get("pid") == os.getpid():
            os.unlink(state_file)
        # Python restores the default SIGTERM action while it shuts down: a second SIGTERM from an
        # impatient supervisor must not turn a clean exit into "killed by signal".
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log.info("stopped after %d request(s)", server.served)
    return 0
