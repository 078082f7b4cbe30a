"""Log line formats: `plain` (the historical `time pid LEVEL logger: message`) and `json`, one object
per line for log collectors (Fluent Bit, Vector, Loki's promtail), the way kindnet and flannel log.

A JSON line always has the same keys, null when the record does not know them:
  time (RFC 3339, UTC, milliseconds), level, logger, msg,
  verb, containerID, network, ifname   - the CNI request the record belongs to,
  code (the CNI result: 0 or the error code), duration_ms (the whole request)
Where a record gets the request fields: the plugin's per-request handlers (cli._RequestLog) put
them on every record of the request; the daemon passes them as `extra=` (fields()).

Chosen with `--log-format` (daemon, agent, inspection commands), `logFormat` in the network
configuration (the plugin's own logs), or $PYCNI_LOG_FORMAT; default plain. Imports only `json`
and `logging`, both of which a process that logs has already paid for.
"""

from __future__ import annotations

import json
import logging
import time

FORMATS = ("plain", "json")
ENV = "PYCNI_LOG_FORMAT"
PLAIN = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# record attribute -> JSON key
REQUEST_KEYS = {"cni_verb": "verb", "cni_container_id": "containerID", "cni_network": "network",
                "cni_ifname": "ifname", "cni_code": "code", "cni_duration_ms": "duration_ms"}


def choose(*candidates: str | None) -> str:
    """The first non-empty of the candidates (flag, config key, environment); plain if none. An
    unknown value is refused by the caller's parser (argparse choices, the config model)."""
    for value in candidates:
        if value:
            return value.lower()
    return "plain"


def fields(verb: str | None = None, container_id: str | None = None, network: str | None = None,
           ifname: str | None = None, code: int | None = None, duration_ms: float | None = None) -> dict:
    """`extra=` for a logging call about one request."""
    return {"cni_verb": verb, "cni_container_id": container_id, "cni_network": network, "cni_ifname": ifname,
            "cni_code": code, "cni_duration_ms": None if duration_ms is None else round(duration_ms, 3)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for attr, key in REQUEST_KEYS.items():
            doc[key] = getattr(record, attr, None)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def formatter(fmt: str, plain: str = PLAIN) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(plain)


def add_argument(parser, env: str = ENV) -> None:
    import os

    default = choose(os.environ.get(env))
    parser.add_argument("--log-format", choices=FORMATS, default=default if default in FORMATS else "plain",
                        help=f"plain (default) or json: one object per line (default ${env})")


def basic_config(level: str, fmt: str, plain: str = PLAIN) -> None:
    """logging.basicConfig on stderr in the chosen format (long-lived processes)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, plain))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
