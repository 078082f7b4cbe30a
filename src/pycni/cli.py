"""Entry points: speak the CNI execution protocol (SPEC.md "Section 2: Execution Protocol").

`run()` is the whole protocol as a pure function of (environment, stdin) -> (exit status, stdout
text); `main_*` wire it to the process. Exactly one JSON document reaches stdout - the result, the
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

# plugin name -> module with Config, KNOWN_ARGS and the verb functions add/delete/check/status/gc
PLUGINS = {"pycni": "pycni.bridge.verbs", "pycni-host-local": "pycni.ipam.verbs"}
_VERB_FUNCS = {"ADD": "add", "DEL": "delete", "CHECK": "check", "STATUS": "status", "GC": "gc"}

# `pycni <name> ...` -> "module:function" taking the remaining argv and returning an exit status.
SUBCOMMANDS = {"daemon": "pycni.daemon.server:main", "agent": "pycni.agent.main:main",
               "leases": "pycni.inspect.leases:main", "status": "pycni.inspect.status:main",
               "gc": "pycni.inspect.gc_preview:main", "netpol": "pycni.agent.netpol_main:main"}

PYDANTIC_PLUGINS_ENV = "PYDANTIC_DISABLE_PLUGINS"
MAX_STDIN = 1 << 20  # = spec.env.MAX_CONFIG_BYTES = daemon.wire.MAX_STDIN (tests keep them equal; neither is imported here)


def run(plugin: str, environ: dict[str, str], stdin: bytes, stderr=None) -> tuple[int, str]:
    """Execute one CNI request. Returns (exit status, text for stdout).

    Logs of this request go to `stderr` (default: sys.stderr) and to the configured log file; in
    the daemon every request has its own stream, which the shim prints on its own stderr.
    """
    import json

    from .spec import env as cnienv
    from .spec import version as versions
    from .spec.errors import INTERNAL, CNIError

    guessed = versions.declared(stdin)
    error_version = versions.for_error(guessed)
    logs = None  # set up after VERSION (which never logs): `logging` costs ~8 ms to import
    try:
        env = cnienv.read_environment(environ)
        if env.command == "VERSION":
            # SPEC.md "VERSION": stdin carries {"cniVersion": ...}; answer even if it is garbage.
            return 0, json.dumps(versions.version_info(guessed))
        logs = _RequestLog(sys.stderr if stderr is None else stderr, environ)
        code = INTERNAL
        from importlib import import_module

        from .spec import config as netconf

        data = netconf.decode(stdin)
        version = netconf.version_of(data)
        versions.require_supported(version, env.command)
        cnienv.validate_network_name(data.get("name"))
        module = import_module(PLUGINS[plugin])
        conf = netconf.load(module.Config, data)
        logs.configure(conf.logFile, conf.logLevel, conf.logFormat, network=conf.name)
        args = cnienv.parse_cni_args(env.args, module.KNOWN_ARGS)
        from .spec.request import Request

        request = Request(env=env, conf=conf, raw=data, stdin=stdin, version=version, cni_args=args,
                          environ=environ)
        result = getattr(module, _VERB_FUNCS[env.command])(request)
        code = 0
        if env.command == "ADD":
            return 0, json.dumps(result.to_dict(version))
        return 0, ""  # CHECK, DEL, STATUS and GC print nothing on success
    except CNIError as err:
        logs = logs or _RequestLog(sys.stderr if stderr is None else stderr, environ)
        code = err.code
        _log().warning("%s failed: code %d: %s %s", plugin, err.code, err.msg, err.details)
        return 1, json.dumps(err.to_dict(error_version))
    except Exception as exc:  # noqa: BLE001 - a bug: still one JSON error document, the traceback only in the log
        logs = logs or _RequestLog(sys.stderr if stderr is None else stderr, environ)
        code = INTERNAL
        _log().error("%s: unexpected %s: %s", plugin, type(exc).__name__, exc)
        _log().debug("traceback", exc_info=True)
        err = CNIError(INTERNAL, f"internal error: {type(exc).__name__}", str(exc)[:500])
        return 1, json.dumps(err.to_dict(error_version))
    finally:
        if logs is not None:
            logs.finish(plugin, code)
            logs.close()


def _log():
    import logging

    return logging.getLogger("pycni")


class _RequestLog:
    """The log handlers of one request: its stderr stream and, once the configuration is known, its
    `logFile`. Handlers only take records of the thread that runs the request, so concurrent requests
    in the daemon keep their logs apart; level: `logLevel` > PYCNI_LOG_LEVEL > WARNING; format
    (pycni.logfmt): `logFormat` > PYCNI_LOG_FORMAT > plain. Every record carries the request's
    verb, container ID, ifname and (once known) network; the last one, at INFO, its code and duration."""

    def __init__(self, stream, environ: dict[str, str]) -> None:
        import logging
        import threading
        import time

        from . import logfmt

        self._logging = logging
        self._logfmt = logfmt
        self._environ = environ
        self._thread = threading.get_ident()
        self._start = time.monotonic()
        self.format = logfmt.choose(environ.get(logfmt.ENV))
        self.context = logfmt.fields(environ.get("CNI_COMMAND"), environ.get("CNI_CONTAINERID"),
                                     None, environ.get("CNI_IFNAME"))
        logger = logging.getLogger("pycni")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)  # the handlers filter, per request
        self.logger = logger
        self.handlers: list = []
        self._add(logging.StreamHandler(stream))
        self._set_level("")

    def _filter(self, record) -> bool:
        if record.thread != self._thread:
            return False
        for key, value in self.context.items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True

    def _add(self, handler) -> None:
        handler.setFormatter(self._logfmt.formatter(self.format))
        handler.addFilter(self._filter)
        self.handlers.append(handler)
        self.logger.addHandler(handler)

    def _set_level(self, level: str) -> None:
        name = (level or self._environ.get("PYCNI_LOG_LEVEL") or "WARNING").upper()
        value = getattr(self._logging, name, self._logging.WARNING)
        for handler in self.handlers:
            handler.setLevel(value if isinstance(value, int) else self._logging.WARNING)

    def configure(self, log_file: str, level: str, fmt: str = "", network: str | None = None) -> None:
        self.context["cni_network"] = network
        self.format = self._logfmt.choose(fmt, self._environ.get(self._logfmt.ENV))
        for handler in self.handlers:
            handler.setFormatter(self._logfmt.formatter(self.format))
        path = log_file or self._environ.get("PYCNI_LOG_FILE", "")
        if path:
            try:
                self._add(self._logging.FileHandler(path))
            except OSError as exc:
                self.handlers[0].stream.write(f"pycni: cannot open log file {path}: {exc}\n")
        self._set_level(level)

    def finish(self, plugin: str, code: int) -> None:
        import time

        ms = (time.monotonic() - self._start) * 1000
        self.context.update(cni_code=code, cni_duration_ms=round(ms, 3))
        self.logger.info("%s %s: code %d in %.1f ms", plugin, self.context["cni_verb"], code, ms)

    def close(self) -> None:
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            if isinstance(handler, self._logging.FileHandler):
                handler.close()
        self.handlers.clear()


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
    if plugin not in PLUGINS:
        raise SystemExit(f"unknown plugin {plugin!r}")
    _main(plugin, handoff=False)
