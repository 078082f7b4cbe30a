"""A long-running process inside a node namespace, known and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from .cleanup import log
from .netns import Node
from .processes import kill_pid, pid_alive


class Daemon:
    """`nsenter --net=<node> -- argv...`: nsenter execs the program, so the PID held here is the daemon's own.
    Output goes to `logfile`; the stop is registered with the node's cleanup when it starts."""

    def __init__(self, node: Node, argv: list[str], logfile: Path, env: dict | None = None) -> None:
        self.node, self.argv, self.logfile, self.env = node, argv, logfile, env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(self.node.argv(*self.argv), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self.node.cleanup.add(f"daemon {self.argv[0]} pid {self.proc.pid}", self.stop)
        time.sleep(0.05)  # nsenter has exec()ed the daemon by now
        exe = "?"
        with contextlib.suppress(OSError):
            exe = os.path.basename(os.readlink(f"/proc/{self.pid}/exe"))
        log(f"started {self.argv[0]} as PID {self.pid} ({exe}) in {self.node.name}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        kill_pid(self.pid, sig, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        log(f"stopped PID {self.pid} (signal {int(sig)}), exit {self.proc.returncode}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and pid_alive(self.pid)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
