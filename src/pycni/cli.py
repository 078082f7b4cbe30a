"""Entry points: speak the CNI execution protocol (SPEC.md "Section 2: Execution Protocol").

`run()` is the whole protocol as a pure function of (environment, stdin) -> (exit status, stdout
text); `main_*` wire it to the process. Exactly one JSON document reaches stdout - the result, the
VERSION answer or the error object - and only at the very end: anything else that tries to write
to stdout during a verb is redirected to stderr. Heavy modules (pydantic, pyroute2) are imported
only after VERSION has been answered and only by the verb that needs them.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import import_module

from .spec import env as cnienv
from .spec import version as versions
from .spec.errors import INTERNAL, CNIError

# plugin name -> module with Config, KNOWN_ARGS and the verb functions add/delete/check/status/gc
PLUGINS = {"pycni": "pycni.bridge.verbs", "pycni-host-local": "pycni.ipam.verbs"}
_VERB_FUNCS = {"ADD": "add", "DEL": "delete", "CHECK": "check", "STATUS": "status", "GC": "gc"}


def _best_effort_version(stdin: bytes) -> str | None:
    if len(stdin) > cnienv.MAX_CONFIG_BYTES:
        return None
    try:
        value = json.loads(stdin).get("cniVersion")
    except Exception:
        return None
    return value if isinstance(value, str) else None


def run(plugin: str, environ: dict[str, str], stdin: bytes) -> tuple[int, str]:
    """Execute one CNI request. Returns (exit status, text for stdout)."""
    # Errors are printed in the configuration's version when it is one we speak (SPEC.md "Error").
    guessed = _best_effort_version(stdin)
    error_version = guessed if guessed in versions.SUPPORTED_VERSIONS else versions.LATEST
    try:
        env = cnienv.read_environment(environ)
        if env.command == "VERSION":
            # SPEC.md "VERSION": stdin carries {"cniVersion": ...}; answer even if it is garbage.
            return 0, json.dumps(versions.version_info(guessed))
        from .spec import config as netconf

        data = netconf.decode(stdin)
        version = netconf.version_of(data)
        versions.require_supported(version, env.command)
        cnienv.validate_network_name(data.get("name"))
        module = import_module(PLUGINS[plugin])
        conf = netconf.load(module.Config, data)
        _configure_logging(conf.logFile, conf.logLevel, environ)
        args = cnienv.parse_cni_args(env.args, module.KNOWN_ARGS)
        from .spec.request import Request

        request = Request(env=env, conf=conf, raw=data, stdin=stdin, version=version, cni_args=args)
        result = getattr(module, _VERB_FUNCS[env.command])(request)
        if env.command == "ADD":
            return 0, json.dumps(result.to_dict(version))
        return 0, ""  # CHECK, DEL, STATUS and GC print nothing on success
    except CNIError as err:
        _log().warning("%s failed: code %d: %s %s", plugin, err.code, err.msg, err.details)
        return 1, json.dumps(err.to_dict(error_version))
    except Exception as exc:  # a bug: still one JSON error document, the traceback only in the log
        _log().error("%s: unexpected %s: %s", plugin, type(exc).__name__, exc)
        _log().debug("traceback", exc_info=True)
        err = CNIError(INTERNAL, f"internal error: {type(exc).__name__}", str(exc)[:500])
        return 1, json.dumps(err.to_dict(error_version))


def _log():
    import logging

    return logging.getLogger("pycni")


def _configure_logging(log_file: str, level: str, environ: dict[str, str]) -> None:
    """Logs go to stderr (which runtimes capture) and optionally to a file; never to stdout."""
    import logging

    logger = logging.getLogger("pycni")
    if getattr(logger, "_pycni_configured", False):
        return
    level = (level or environ.get("PYCNI_LOG_LEVEL") or "WARNING").upper()
    logger.setLevel(getattr(logging, level, logging.WARNING))
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    path = log_file or environ.get("PYCNI_LOG_FILE", "")
    if path:
        try:
            handlers.append(logging.FileHandler(path))
        except OSError as exc:
            print(f"pycni: cannot open log file {path}: {exc}", file=sys.stderr)
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    logger._pycni_configured = True  # type: ignore[attr-defined]


def _main(plugin: str) -> None:
    # Read one byte past the limit so an oversized configuration is detected, not truncated.
    stdin = sys.stdin.buffer.read(cnienv.MAX_CONFIG_BYTES + 1) if sys.stdin is not None else b""
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # nothing but the final document may reach stdout
    status, text = run(plugin, dict(os.environ), stdin)
    sys.stdout = real_stdout
    if text:
        real_stdout.write(text + "\n")
        real_stdout.flush()
    sys.exit(status)


def main_bridge() -> None:
    _main("pycni")


def main_host_local() -> None:
    _main("pycni-host-local")
