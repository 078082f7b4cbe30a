"""Entry points: speak the CNI execution protocol (SPEC.md "Section 2: Execution Protocol").

`pycni.runner.run()` is the whole protocol as a pure function of (environment, stdin) -> (exit status,
stdout text); `main_*` wire it to the process. Exactly one JSON document reaches stdout - the result, the
VERSION answer or the error object - and only at the very end: anything else that tries to write
to stdout during a verb is redirected to stderr.

Two ways to run a verb (docs/performance.md):
  * warm: the exec'd plugin is a thin shim that hands (plugin, environment, stdin) to the pycni
    daemon over a root-only unix socket (pycni.daemon) and prints what it answers - the daemon runs
    the same `run()` with everything already imported;
  * cold: when no daemon answers (or PYCNI_NO_DAEMON=1, or `"pycniDaemon": false` in the config),
    the plugin runs `run()` itself.
Either way the result is the same. This module imports only `os` and `sys` at load time: the shim
path must stay cheap, and the heavy modules (pydantic, pyroute2) are imported only after VERSION
has been answered and only by the verb that needs them.

`pycni <subcommand> [args]` (any argument at all - a CNI runtime never passes one) runs a
subcommand instead of a verb: see SUBCOMMANDS.
"""

from __future__ import annotations

import os
import sys

# `pycni <name> ...` -> "module:function" taking the remaining argv and returning an exit status.
SUBCOMMANDS = {"daemon": "pycni.daemon.server:main", "agent": "pycni.agent.main:main",
               "leases": "pycni.inspect.leases:main", "status": "pycni.inspect.status:main",
               "gc": "pycni.inspect.gc_preview:main", "netpol": "pycni.agent.netpol_main:main"}

PYDANTIC_PLUGINS_ENV = "PYDANTIC_DISABLE_PLUGINS"
MAX_STDIN = 1 << 20  # = spec.env.MAX_CONFIG_BYTES = daemon.wire.MAX_STDIN (tests keep them equal; neither is imported here)

def _daemon_allowed(environ: dict[str, str], stdin: bytes) -> bool:
    """Whether to try the daemon at all (pycni.daemon.wire.handoff_allowed: PYCNI_NO_DAEMON, PYCNI_FAULT,
    `"pycniDaemon": false`)."""
    from .daemon import wire

    return wire.handoff_allowed(environ, stdin)


def _main(plugin: str, handoff: bool = True) -> None:
    # Read one byte past the limit so an oversized configuration is detected, not truncated.
    stdin = sys.stdin.buffer.read(MAX_STDIN + 1) if sys.stdin is not None else b""
    environ = dict(os.environ)
    allowed = _daemon_allowed(environ, stdin)
    if handoff and allowed:
        from .daemon import client

        answer = client.call(plugin, environ, stdin)
        if answer is not None:  # the daemon ran the verb (or failed mid-way: its error document)
            status, text, logs = answer
            if logs:
                sys.stderr.write(logs)
                sys.stderr.flush()
            _finish(status, text)
        from .daemon import spool

        spool.record(client.socket_path(environ), plugin, environ.get("CNI_COMMAND", ""), client.last_fallback)
    elif allowed:  # run_standalone: the native shim tried the daemon and fell back to us
        from .daemon import client, spool

        spool.record(client.socket_path(environ), plugin, environ.get("CNI_COMMAND", ""), "shim")
    disable_pydantic_plugins()
    from .runner import run

    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # nothing but the final document may reach stdout
    status, text = run(plugin, environ, stdin)
    sys.stdout = real_stdout
    _finish(status, text)


def _finish(status: int, text: str) -> None:
    if text:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    sys.exit(status)


def disable_pydantic_plugins() -> None:
    """Cold path only: pydantic looks for plugins among the entry points of every installed
    distribution (importlib.metadata) the first time it builds a model; pycni uses none.
    PYDANTIC_DISABLE_PLUGINS=__all__ is pydantic's own switch for that ("Disabling plugins" in its
    plugin documentation). An operator who set the variable keeps their value. Set after the
    request's environment was copied, so a delegated plugin gets the runtime's environment as it was.
    (The daemon scans once at start; it does not need this.)"""
    os.environ.setdefault(PYDANTIC_PLUGINS_ENV, "__all__")


def _subcommand(args: list[str]) -> int:
    name = args[0]
    target = SUBCOMMANDS.get(name)
    if target is None:
        print(f"usage: pycni [{'|'.join(sorted(SUBCOMMANDS))}] [args...]  (no arguments: run as a CNI plugin)",
              file=sys.stderr)
        return 2
    from importlib import import_module

    module, _, func = target.partition(":")
    return int(getattr(import_module(module), func)(args[1:]) or 0)


def main_bridge(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args:
        sys.exit(_subcommand(args))
    _main("pycni")


def main_host_local() -> None:
    _main("pycni-host-local")


def run_standalone(plugin: str) -> None:
    """The verb in this process, no daemon handoff: what the native shim (pycni/daemon/shim.c) execs
    when the daemon cannot serve a request it has already tried."""
    from .runner import PLUGINS

    if plugin not in PLUGINS:
        raise SystemExit(f"unknown plugin {plugin!r}")
    _main(plugin, handoff=False)
