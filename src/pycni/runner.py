"""One CNI request, run: the execution protocol (SPEC.md "Section 2: Execution Protocol") as a pure
function of (plugin, environment, stdin) -> (exit status, stdout text).

Both entry points call `run()`: the exec'd plugin (pycni.cli) with nothing kept between requests, and the
daemon's workers (pycni.daemon) with their Context (pycni.context: the lease cache and netlink handles
of a long-lived process). Exactly one JSON document is returned - the result, the VERSION answer or the
error object. This module imports only `sys` at load time: the exec'd plugin imports it before
it knows whether the daemon will serve the request, and the heavy modules (pydantic, pyroute2) are
imported only after VERSION has been answered and only by the verb that needs them.
"""

from __future__ import annotations

import sys

# plugin name -> module with Config, KNOWN_ARGS and the verb functions add/delete/check/status/gc
PLUGINS = {"pycni": "pycni.bridge.verbs", "pycni-host-local": "pycni.ipam.verbs"}
_VERB_FUNCS = {"ADD": "add", "DEL": "delete", "CHECK": "check", "STATUS": "status", "GC": "gc"}


def run(plugin: str, environ: dict[str, str], stdin: bytes, stderr=None, context=None) -> tuple[int, str]:
    """Execute one CNI request. Returns (exit status, text for stdout); never raises.

    Logs of this request go to `stderr` (default: sys.stderr) and to the configured log file; in
    the daemon every request has its own stream, which the shim prints on its own stderr. `context`:
    what a long-lived caller keeps between requests (pycni.context.Context), handed to the verb.
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
                          environ=environ, context=context)
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


def error_document(stdin: bytes, code: int, msg: str, details: str = "") -> str:
    """The error object for a request that could not be run to its end (a daemon worker that died), in
    the version `run()` would have used."""
    import json

    from .spec import version as versions
    from .spec.errors import CNIError

    return json.dumps(CNIError(code, msg, details).to_dict(versions.for_error(versions.declared(stdin))))


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


