"""What pycni's long-lived processes tell an operator about themselves: small JSON files in the
daemon's run directory (default /run/pycni), read by `pycni status` and by the daemon's metrics.

  daemon.json  written by `pycni daemon` when it starts listening: version, pid, start time,
               workers, socket, metrics address. `pycni status` checks the pid and the socket, so a
               file left by a daemon that died is reported as such.
  agent.json   rewritten by `pycni agent` after every round: when, how long, the changes and errors
               of the last round, and running totals (rounds, rounds with errors, routes removed).

Files are replaced atomically (write a temporary file, rename), so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import time

RUN_DIR = "/run/pycni"
DAEMON_FILE = "daemon.json"
AGENT_FILE = "agent.json"
DEFAULT_AGENT_STATE = os.path.join(RUN_DIR, AGENT_FILE)


def write(path: str, doc: dict) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, sort_keys=True)
    os.replace(tmp, path)


def read(path: str) -> dict | None:
    """The document, or None when there is none (or it is not one of ours)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def daemon_file(socket_path: str) -> str:
    return os.path.join(os.path.dirname(socket_path) or ".", DAEMON_FILE)


class AgentState:
    """The agent's running totals and its last round, kept in agent.json."""

    def __init__(self, path: str) -> None:
        self.path = path
        old = read(path) or {}
        totals = old.get("totals") if isinstance(old.get("totals"), dict) else {}
        # totals survive an agent restart (the file is in /run: they reset with the node)
        self.totals = {k: int(totals.get(k, 0)) for k in ("rounds", "failedRounds", "routesAdded",
                                                            "routesRemoved", "routesReplaced")}

    def record(self, status: dict, plan=None) -> None:
        """After a round: its status document (agent.main) and the route plan it applied."""
        self.totals["rounds"] += 1
        if status.get("errors"):
            self.totals["failedRounds"] += 1
        if plan is not None:
            self.totals["routesAdded"] += len(plan.add)
            self.totals["routesRemoved"] += len(plan.delete)
            self.totals["routesReplaced"] += len(plan.replace)
        doc = {"lastRound": {"time": time.time(), "seconds": status.get("seconds"),
                             "changes": list(status.get("changes", [])), "errors": list(status.get("errors", [])),
                             "masq": status.get("masq"), "podCIDRs": status.get("podCIDRs", []),
                             "routes": status.get("routes", {}),
                             "removed": [str(r.dst) for r in plan.delete] if plan is not None else []},
               "node": status.get("node"), "pid": os.getpid(), "totals": self.totals}
        try:
            write(self.path, doc)
        except OSError:
            pass  # the state file is for operators; the round itself went as it went
