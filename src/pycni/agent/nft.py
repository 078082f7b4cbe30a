"""One nftables table owned by the agent, replaced as a whole.

`replace(body)` loads `add table F T` + `delete table F T` + the new table in ONE `nft -f`
transaction: the kernel switches from the old ruleset to the new one atomically (a packet sees one
or the other, never a half-built table, never a moment without one), and nothing of the old table
survives. `listing()` is `nft -s list table` (stateless: no counter values), which the callers keep
right after applying to notice drift (the table flushed or edited behind their back).
"""

from __future__ import annotations

import shutil
import subprocess

_TIMEOUT = 20


class NftError(Exception):
    pass


def available() -> bool:
    return shutil.which("nft") is not None


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{argv[0]}: {exc}") from None


class Table:
    def __init__(self, family: str, name: str) -> None:
        self.family, self.name = family, name

    def script(self, body: str, header: str = "") -> str:
        """The `nft -f` input replacing the table with `body` (the lines inside `table F T { ... }`)."""
        ident = f"{self.family} {self.name}"
        lines = [f"# {header}"] if header else []
        lines += [f"add table {ident}", f"delete table {ident}", f"table {ident} {{", body.rstrip("\n"), "}", ""]
        return "\n".join(lines)

    def replace(self, body: str, header: str = "") -> None:
        proc = run(["nft", "-f", "-"], stdin=self.script(body, header))
        if proc.returncode != 0:
            raise NftError(f"nft -f failed: {(proc.stderr or proc.stdout).strip()[:800]}")

    def listing(self) -> str | None:
        proc = run(["nft", "-s", "list", "table", self.family, self.name])
        return proc.stdout if proc.returncode == 0 else None

    def delete(self) -> None:
        run(["nft", "delete", "table", self.family, self.name])
