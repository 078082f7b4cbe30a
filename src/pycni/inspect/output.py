"""How the inspection commands print: aligned plain-text tables by default, one JSON document with
--json (stable keys, for scripts)."""

from __future__ import annotations

import json
import sys


def table(headers: list[str], rows: list[list[object]], out=None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in headers]] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def dump(doc: object, out=None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def age(seconds: float | None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"
