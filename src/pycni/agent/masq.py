"""Masquerade pod traffic that leaves the cluster (and nothing else).

Packets from this node's pod CIDRs to a destination outside the cluster CIDR(s) (and not multicast or
broadcast) get the node's
address as source (their replies could not find the pods otherwise); pod-to-pod traffic, on this
node or across nodes, keeps its source address. This is why the conflist sets the bridge plugin's
`ipMasq` to false (see conflist.py).

nftables (preferred): one table `inet pycni-agent`, replaced as a whole in one `nft -f` transaction
(`add table` + `delete table` + the new table: the ruleset switches atomically, with no moment
without masquerading and no leftover rule). What is applied is remembered (`nft -s list table`
output), and drift - the table flushed or edited by someone else - is repaired on the next round.

iptables (fallback, when there is no `nft`): a chain `PYCNI-AGENT-MASQ` in the nat table of each
family, rebuilt in one `iptables-restore --noflush` transaction (declaring the chain flushes it), and
one jump per pod CIDR from POSTROUTING tagged with the comment `pycni-agent`.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from . import nft

TABLE = "pycni-agent"
CHAIN = "PYCNI-AGENT-MASQ"
COMMENT = "pycni-agent"

log = logging.getLogger("pycni.agent")


class MasqError(Exception):
    pass


# Never masqueraded either: multicast and broadcast (IGMP/MLD reports the node's own bridge sends
# from the gateway address, which lies inside the pod CIDR, would otherwise be counted as egress).
NO_MASQ = {4: ["224.0.0.0/4", "255.255.255.255/32"], 6: ["ff00::/8"]}


def _split(cidrs: Sequence[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {4: [], 6: []}
    for c in cidrs:
        net = ipaddress.ip_network(c, strict=True)
        out[net.version].append(str(net))
    return out


@dataclass(frozen=True)
class MasqSpec:
    pod_cidrs: tuple[str, ...]      # this node's
    cluster_cidrs: tuple[str, ...]  # the whole cluster's pod range(s), one per family

    def families(self) -> dict[int, tuple[list[str], list[str]]]:
        """family -> (pod CIDRs, cluster CIDRs), only for families with both."""
        pods, cluster = _split(self.pod_cidrs), _split(self.cluster_cidrs)
        return {v: (pods[v], cluster[v]) for v in (4, 6) if pods[v] and cluster[v]}


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return nft.run(argv, stdin)
    except nft.NftError as exc:
        raise MasqError(str(exc)) from None


# -- nftables ------------------------------------------------------------------------------------------


def _nft_body(spec: MasqSpec) -> str:
    lines = []
    fams = spec.families()
    for v, (pods, cluster) in fams.items():
        typ = "ipv4_addr" if v == 4 else "ipv6_addr"
        lines += [
            f"\tset pods{v} {{ type {typ}; flags interval; elements = {{ {', '.join(pods)} }}; }}",
            f"\tset cluster{v} {{ type {typ}; flags interval; elements = {{ {', '.join(cluster + NO_MASQ[v])} }}; }}",
        ]
    lines += ["\tchain postrouting {", "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    for v in fams:
        ip = "ip" if v == 4 else "ip6"
        lines.append(f'\t\t{ip} saddr @pods{v} {ip} daddr != @cluster{v} counter masquerade '
                     f'comment "pod egress leaving the cluster"')
    lines += ["\t}"]
    return "\n".join(lines)


_HEADER = "pycni agent: masquerade pod traffic leaving the cluster (generated; replaced as a whole)"


def render_nft(spec: MasqSpec) -> str:
    """The whole `nft -f` script: replaces table inet pycni-agent atomically."""
    return nft.Table("inet", TABLE).script(_nft_body(spec), _HEADER)


class NftBackend:
    name = "nftables"

    def __init__(self) -> None:
        self.table = nft.Table("inet", TABLE)
        self.applied: str | None = None  # `nft -s list table` right after our last apply
        self._spec: MasqSpec | None = None

    available = staticmethod(nft.available)

    def ensure(self, spec: MasqSpec) -> bool:
        """Apply unless the kernel already holds exactly what we applied last. True when applied."""
        if self.applied is not None and self.table.listing() == self.applied and self._spec == spec:
            return False
        try:
            self.table.replace(_nft_body(spec), _HEADER)
        except nft.NftError as exc:
            raise MasqError(str(exc)) from None
        self.applied, self._spec = self.table.listing(), spec
        return True

    def remove(self) -> None:
        self.table.delete()
        self.applied = None


# -- iptables ------------------------------------------------------------------------------------------


def render_iptables_chain(cluster: Sequence[str], version: int = 4) -> str:
    """iptables-restore --noflush input for one family: the chain, rebuilt."""
    lines = ["*nat", f":{CHAIN} - [0:0]"]
    lines += [f"-A {CHAIN} -d {c} -j RETURN" for c in [*cluster, *NO_MASQ[version]]]
    lines += [f"-A {CHAIN} -j MASQUERADE", "COMMIT", ""]
    return "\n".join(lines)


def jump_rule(pod_cidr: str) -> list[str]:
    return ["-s", pod_cidr, "-m", "comment", "--comment", COMMENT, "-j", CHAIN]


class IptablesBackend:
    name = "iptables"

    def __init__(self) -> None:
        self.applied: dict[int, str] = {}

    @staticmethod
    def available() -> bool:
        return shutil.which("iptables") is not None and shutil.which("iptables-restore") is not None

    @staticmethod
    def _tools(v: int) -> tuple[str, str, str]:
        p = "iptables" if v == 4 else "ip6tables"
        return p, f"{p}-restore", f"{p}-save"

    def _jumps(self, tool: str) -> list[str]:
        proc = _run([tool, "-w", "-t", "nat", "-S", "POSTROUTING"])
        if proc.returncode != 0:
            raise MasqError(f"{tool} -S POSTROUTING: {proc.stderr.strip()[:300]}")
        return [line for line in proc.stdout.splitlines() if f"-j {CHAIN}" in line]

    def _state(self, v: int) -> str:
        tool = self._tools(v)[0]
        chain = _run([tool, "-w", "-t", "nat", "-S", CHAIN])
        return (chain.stdout if chain.returncode == 0 else "") + "\n".join(self._jumps(tool))

    def ensure(self, spec: MasqSpec) -> bool:
        fams = spec.families()
        changed = False
        for v in (4, 6):
            if v not in fams:
                if self.applied.get(v) is not None or self._has_chain(v):
                    self._remove_family(v)
                    changed = True
                continue
            if self.applied.get(v) is not None and self._state(v) == self.applied[v]:
                continue
            pods, cluster = fams[v]
            tool, restore, _ = self._tools(v)
            proc = _run([restore, "-w", "--noflush"], stdin=render_iptables_chain(cluster, v))
            if proc.returncode != 0:
                raise MasqError(f"{restore} failed: {proc.stderr.strip()[:500]}")
            want = {tuple(jump_rule(p)) for p in pods}
            for line in self._jumps(tool):  # drop jumps for CIDRs we no longer own
                args = line.split()[2:]
                src = args[args.index("-s") + 1] if "-s" in args else ""
                if not any(src == p or src == p.split("/")[0] + "/32" for p in pods):
                    _run([tool, "-w", "-t", "nat", "-D", "POSTROUTING", *[a.strip('"') for a in args]])
            for rule in sorted(want):
                if _run([tool, "-w", "-t", "nat", "-C", "POSTROUTING", *rule]).returncode != 0:
                    proc = _run([tool, "-w", "-t", "nat", "-A", "POSTROUTING", *rule])
                    if proc.returncode != 0:
                        raise MasqError(f"{tool} -A POSTROUTING: {proc.stderr.strip()[:300]}")
            self.applied[v] = self._state(v)
            changed = True
        return changed

    def _has_chain(self, v: int) -> bool:
        return _run([self._tools(v)[0], "-w", "-t", "nat", "-S", CHAIN]).returncode == 0

    def _remove_family(self, v: int) -> None:
        tool = self._tools(v)[0]
        if shutil.which(tool) is None:
            return
        for line in self._jumps(tool):
            _run([tool, "-w", "-t", "nat", "-D", "POSTROUTING", *[a.strip('"') for a in line.split()[2:]]])
        _run([tool, "-w", "-t", "nat", "-F", CHAIN])
        _run([tool, "-w", "-t", "nat", "-X", CHAIN])
        self.applied.pop(v, None)

    def remove(self) -> None:
        for v in (4, 6):
            try:
                self._remove_family(v)
            except MasqError as exc:
                log.warning("iptables cleanup (IPv%d): %s", v, exc)


class NoBackend:
    name = "none"

    @staticmethod
    def available() -> bool:
        return True

    def ensure(self, spec: MasqSpec) -> bool:
        return False

    def remove(self) -> None:
        pass


def backend(name: str = "auto"):
    if name == "none":
        return NoBackend()
    if name in ("auto", "nftables") and NftBackend.available():
        return NftBackend()
    if name == "nftables":
        raise MasqError("nft not found (use --masq-backend iptables or none)")
    if IptablesBackend.available():
        return IptablesBackend()
    raise MasqError("neither nft nor iptables/iptables-restore found (use --masq-backend none)")
