"""The daemon's golden wire exchanges (tests/support/wire/, listed in cases.json): the requests and answers
tests/unit/test_daemon_wire.py runs against the Python client, the C shim and the server, and
tests/netns/test_daemon.py against a real daemon."""

from __future__ import annotations

import json
from pathlib import Path

from pycni import __version__

FIXTURES = Path(__file__).resolve().parent / "wire"
CASES = json.loads((FIXTURES / "cases.json").read_text())
EXCHANGES = {c["name"]: c for c in CASES["exchanges"]}
REFUSALS = {c["name"]: c for c in CASES["refusals"]}


def request_body(name: str, sock: str = "@SOCKET@") -> bytes:
    return (FIXTURES / f"{name}.request").read_bytes().replace(b"@VERSION@", __version__.encode()) \
        .replace(b"@SOCKET@", sock.encode())


def answer_bytes(name: str) -> bytes | None:
    path = FIXTURES / f"{name}.answer"
    return path.read_bytes() if path.exists() else None
