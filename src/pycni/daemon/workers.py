"""The daemon's worker processes: verbs run in parallel on every CPU (issue 13).

The daemon's main process does everything about connections (peer checks, reading, deadlines, answers,
acknowledgements, metrics); the verbs themselves - Python work that holds the GIL - run in worker
processes, so requests for different containers use every CPU of the node:

  * a zygote is forked once, right after the daemon has imported everything and before it starts any
    thread or opens any socket; every worker is forked from the zygote (never from the threaded main
    process), so each starts from the same clean, warm state - also a worker that replaces one that died;
  * the main process talks to each worker over a socketpair: one frame (4-byte length + marshal) per
    request, (id, plugin, environment, stdin) -> (id, exit status, stdout, stderr);
  * a worker runs requests on a few threads of its own, each with a Context (pycni.context) that lives as
    long as the thread: the worker's lease cache (one inotify instance per worker) and the thread's
    netlink handles, reused by every request instead of being opened and closed each time;
  * the main process sends a request to the worker with the fewest requests in flight; requests of one
    container are serialised before they get here (server.py), the lease store by its flock, which holds
    across processes as it does across threads;
  * a worker ignores SIGTERM/SIGINT (the main process decides when to stop) and exits once its socket is
    closed and its requests are done; when the main process dies, the sockets close with it.

A worker that dies answers its requests in flight with None (the server turns that into CNI error 11,
"try again later") and is replaced.
"""

from __future__ import annotations

import logging
import marshal
import os
import signal
import socket
import threading

from .wire import recv_exact

log = logging.getLogger("pycnid")


def _send_frame(sock: socket.socket, payload: object) -> None:
    data = marshal.dumps(payload)
    sock.sendall(len(data).to_bytes(4, "big") + data)


def _recv_frame(sock: socket.socket) -> object:
    size = int.from_bytes(recv_exact(sock, 4), "big")
    return marshal.loads(recv_exact(sock, size))


# -- inside a worker ------------------------------------------------------------------------------------


def serve(sock: socket.socket, threads: int) -> None:
    """A worker's life: run what arrives on `sock` until it is closed, then finish and return."""
    import concurrent.futures
    import io

    from .. import runner
    from ..bridge.netlink import Handles
    from ..context import Context
    from ..ipam.store import LeaseCache
    from ..spec.errors import INTERNAL

    leases = LeaseCache()
    local = threading.local()
    send_lock = threading.Lock()

    def context() -> Context:
        ctx = getattr(local, "context", None)
        if ctx is None:
            ctx = local.context = Context(leases=leases, netlink=Handles())  # opened in the node, on first use
        return ctx

    def handle(rid: int, plugin: str, env: dict[str, str], stdin: bytes) -> None:  # on a pool thread
        logs = io.StringIO()
        try:
            status, text = runner.run(plugin, env, stdin, stderr=logs, context=context())
        except BaseException as exc:  # noqa: BLE001 - runner.run does not raise; if it ever did: still an answer
            status, text = 1, runner.error_document(stdin, INTERNAL, f"internal error: {type(exc).__name__}", str(exc)[:500])
        with send_lock:
            _send_frame(sock, (rid, status, text, logs.getvalue()))

    pool = concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix="pycni-verb")
    try:
        while True:
            try:
                rid, plugin, env, stdin = _recv_frame(sock)  # type: ignore[misc]
            except (EOFError, OSError):
                break
            pool.submit(handle, rid, plugin, env, stdin)
    finally:
        pool.shutdown(wait=True)
        leases.close()


# -- the zygote: forks workers from a clean, single-threaded, warm process ------------------------------------


def _zygote(control: socket.socket, threads: int) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(control, 1, 1)
        except OSError:
            break
        if not msg or not fds:
            break
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a worker reaps what it execs (IPAM delegates)
            control.close()
            with socket.socket(fileno=fds[0]) as sock:
                serve(sock, threads)
            os._exit(0)
        os.close(fds[0])
        try:
            control.sendall(pid.to_bytes(4, "big"))
        except OSError:
            break
    os._exit(0)


# -- the main process's side ----------------------------------------------------------------------------------


class _Worker:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.send_lock = threading.Lock()
        self.pending: dict[int, list] = {}  # request id -> [Event, answer]
        self.alive = True


class Pool:
    """`processes` workers with `threads` request threads each, forked through a zygote."""

    def __init__(self, processes: int, threads: int) -> None:
        self.processes = processes
        self.threads = threads
        self.lock = threading.Lock()
        self.workers: list[_Worker] = []
        self.next_id = 0
        self.closing = False
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the zygote: the caller has not started a thread yet
            try:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.dup2(2, 1)  # not the daemon's stdout (its "ready" line): whoever reads it sees EOF with the daemon
                control.close()
                _zygote(theirs, threads)
            finally:
                os._exit(0)
        theirs.close()
        self.zygote_pid = pid
        self.control = control
        for _ in range(processes):
            self._add()

    def pids(self) -> list[int]:
        with self.lock:
            return [self.zygote_pid] + [w.pid for w in self.workers if w.alive]

    def _add(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:  # one fork request at a time on the control socket
                socket.send_fds(self.control, [b"F"], [theirs.fileno()])
                pid = int.from_bytes(recv_exact(self.control, 4), "big")
        except (OSError, EOFError) as exc:
            mine.close()
            log.error("cannot start a worker process: %s", exc)
            return
        finally:
            theirs.close()
        worker = _Worker(pid, mine)
        with self.lock:
            self.workers.append(worker)
        threading.Thread(target=self._read, args=(worker,), name=f"pycni-worker-{pid}", daemon=True).start()

    def _read(self, worker: _Worker) -> None:
        """Answers from one worker, until it goes away; then its requests in flight get None."""
        try:
            while True:
                rid, status, text, logs = _recv_frame(worker.sock)  # type: ignore[misc]
                with self.lock:
                    waiter = worker.pending.pop(rid, None)
                if waiter is not None:
                    waiter[1] = (status, text, logs)
                    waiter[0].set()
        except (EOFError, OSError, ValueError, TypeError) as exc:
            reason = exc
        with self.lock:
            worker.alive = False
            self.workers.remove(worker)
            lost = list(worker.pending.values())
            worker.pending.clear()
            closing = self.closing
        worker.sock.close()
        for waiter in lost:
            waiter[0].set()  # answer stays None
        if not closing:
            log.error("worker process %d went away (%s) with %d request(s) in flight; starting another",
                      worker.pid, reason, len(lost))
            self._add()

    def run(self, plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, str, str] | None:
        """(exit status, stdout, stderr) of the verb, run by a worker; None when the worker died."""
        waiter: list = [threading.Event(), None]
        with self.lock:
            live = [w for w in self.workers if w.alive]
            if not live:
                return None
            worker = min(live, key=lambda w: len(w.pending))
            self.next_id += 1
            rid = self.next_id
            worker.pending[rid] = waiter
        try:
            with worker.send_lock:
                _send_frame(worker.sock, (rid, plugin, env, stdin))
        except OSError:
            with self.lock:
                worker.pending.pop(rid, None)
            return None
        waiter[0].wait()
        return waiter[1]

    def close(self) -> None:
        """Let the workers go: each finishes what it runs and exits; so does the zygote."""
        with self.lock:
            self.closing = True
            workers = list(self.workers)
        for worker in workers:
            try:
                worker.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.control.close()

