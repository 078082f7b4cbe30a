"""IP masquerading (`ipMasq`) and the MAC spoof check (`macspoofchk`), keyed by attachment.

The reference bridge (plugins/pkg/ip/ipmasq_*.go) installs one rule set per container and finds
them again through the container's addresses, so a DEL without a netns (containerd's second DEL,
SPEC.md "DEL": "plugins should generally complete a DEL action without error even if some
resources are missing") leaks them (plugins #810) and the rules pile up (cni #215). Here:

* every entry carries the attachment key - a hash of (network name, container ID, ifname), the
  triple that identifies an attachment (SPEC.md "Section 2: Execution Protocol", CNI_CONTAINERID
  + CNI_IFNAME, per network) - so DEL and GC (SPEC.md "GC": `cni.dev/valid-attachments`) remove
  them without knowing any address or netns;
* nftables: one table `inet pycni`; per network one postrouting chain with two fixed rules, and
  address sets whose elements (one per pod address, with the key as comment) are all that
  changes per container;
* iptables: per network one chain `PYCNI-MASQ-<id>` jumped to once from POSTROUTING; per pod
  address two rules tagged with the key in a comment.

When the last attachment of a network is removed, its chain and sets go too (and the table when
it is empty), so the node's ruleset returns to what it was. All mutations are serialised by one
flock (/run/pycni/firewall.lock): concurrent ADD/DEL (SPEC.md "Section 2": runtimes run plugins
in parallel for different containers) must not delete a set another ADD just filled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..spec.errors import INVALID_CONFIG, KERNEL, CNIError

LOCK_DIR = "/run/pycni"
TABLE = "pycni"
SPOOF_TABLE = "pycni_spoofchk"
_TIMEOUT = 15
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _hash(*parts: str, n: int) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def network_id(network: str) -> str:
    return _hash("pycni-network", network, n=10)


@dataclass(frozen=True)
class Attachment:
    network: str
    container_id: str
    ifname: str

    @property
    def key(self) -> str:
        return _hash(self.network, self.container_id, self.ifname, n=16)

    @property
    def tag(self) -> str:
        """`<network id>:<key> <ifname> <container ID>`: the comment on every entry (<= 127 bytes)."""
        readable = f"{_SAFE.sub('_', self.ifname)} {_SAFE.sub('_', self.container_id)}"
        return f"{network_id(self.network)}:{self.key} {readable}"[:120]


def key_of(tag: str) -> str:
    return tag.split(" ", 1)[0].partition(":")[2]


_held = threading.local()  # .fd: the firewall lock while this thread holds it (the daemon is threaded)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(LOCK_DIR, "firewall.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held.fd = fd
        yield
    finally:
        _held.fd = None
        os.close(fd)


def _run(argv: list[str], stdin: str | None = None, what: str = "") -> subprocess.CompletedProcess:
    # The child inherits the held lock: if the plugin is killed while nft/iptables runs, the lock
    # stays held until that child is done, so the next DEL or GC sees its work and cannot race it.
    fd = getattr(_held, "fd", None)
    held = (fd,) if fd is not None else ()
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False,
                              pass_fds=held)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(KERNEL, f"failed to run {argv[0]}{': ' + what if what else ''}", str(exc)) from None
    return proc


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise CNIError(KERNEL, f"failed to {what}", (proc.stderr or proc.stdout).strip()[:500])
    return proc


def _subnet(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str:
    return str(iface.network)


class Backend(Protocol):
    name: str

    def available(self) -> bool: ...
    def setup(self, att: Attachment, addrs: list) -> None: ...
    def teardown(self, att: Attachment) -> None: ...
    def gc(self, network: str, valid_keys: set[str]) -> None: ...


# -- nftables -------------------------------------------------------------------------------------


def _nft_render(value: object) -> str:
    """nft JSON set-element key -> nft syntax."""
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_nft_render(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{_nft_render(low)}-{_nft_render(high)}"
    raise CNIError(KERNEL, "unexpected nft set element", repr(value)[:200])


def _nft_list(family: str, table: str) -> list[dict] | None:
    """The objects of one table (JSON), or None when the table does not exist."""
    proc = _run(["nft", "-j", "list", "table", family, table], what="list table")
    if proc.returncode != 0:
        if "No such file" in proc.stderr or "does not exist" in proc.stderr:
            return None
        raise CNIError(KERNEL, f"failed to list nft table {family} {table}", proc.stderr.strip()[:500])
    try:
        return json.loads(proc.stdout).get("nftables", [])
    except ValueError as exc:
        raise CNIError(KERNEL, "nft printed invalid JSON", str(exc)) from None


def _nft_apply(script: str, what: str) -> None:
    _check(_run(["nft", "-f", "-"], stdin=script, what=what), what)


def _elements(objects: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """set name -> [(rendered key, comment)]"""
    out: dict[str, list[tuple[str, str]]] = {}
    for obj in objects:
        s = obj.get("set")
        if not s:
            continue
        items = out.setdefault(s["name"], [])
        for elem in s.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                items.append((_nft_render(elem["elem"]["val"]), str(elem["elem"].get("comment", ""))))
            else:
                items.append((_nft_render(elem), ""))
    return out


def _prune(family: str, table: str, objects: list[dict], remove: Iterable[tuple[str, str]],
           net_ids: set[str]) -> str:
    """Script deleting the elements `remove` [(set, key)], then the chain and sets of each network
    in `net_ids` left without elements, and the whole table when nothing else is left in it."""
    remove = list(remove)
    lines = [f"delete element {family} {table} {s} {{ {k} }}" for s, k in remove]
    elements = _elements(objects)
    left = {s: len(items) for s, items in elements.items()}
    for s, _ in remove:
        left[s] -= 1
    sets = set(elements)
    chains = {o["chain"]["name"] for o in objects if "chain" in o}
    for nid in net_ids:
        mine = {s for s in sets if s.endswith("_" + nid)}
        if all(left[s] <= 0 for s in mine):
            dead = {c for c in chains if c.endswith("_" + nid)}
            lines += [f"delete chain {family} {table} {c}" for c in sorted(dead)]
            lines += [f"delete set {family} {table} {s}" for s in sorted(mine)]
            chains -= dead
            sets -= mine
    if not chains and not sets:
        lines = [f"delete table {family} {table}"]
    return "\n".join(lines) + "\n" if lines else ""


class Nftables:
    """Masquerade with one `inet pycni` table, a chain and four sets per network."""

    name = "nftables"

    def available(self) -> bool:
        return shutil.which("nft") is not None

    def setup(self, att: Attachment, addrs: list) -> None:
        nid = network_id(att.network)
        comment = _SAFE.sub("_", att.network)[:100]
        lines = [f"add table inet {TABLE}"]
        for v, ip, typ in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
            lines.append(f"add set inet {TABLE} a{v}_{nid} {{ type {typ}; }}")
            lines.append(f"add set inet {TABLE} p{v}_{nid} {{ type {typ} . {typ}; flags interval; }}")
        chain = f"masq_{nid}"
        lines += [
            (f"add chain inet {TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; "
             f'comment "pycni network {comment}"; }}'),
            f"flush chain inet {TABLE} {chain}",
            f"add rule inet {TABLE} {chain} ip daddr 224.0.0.0/4 return",
            f"add rule inet {TABLE} {chain} ip6 daddr ff00::/8 return",
            f"add rule inet {TABLE} {chain} ip saddr @a4_{nid} ip saddr . ip daddr != @p4_{nid} masquerade",
            f"add rule inet {TABLE} {chain} ip6 saddr @a6_{nid} ip6 saddr . ip6 daddr != @p6_{nid} masquerade",
        ]
        for iface in addrs:
            v = iface.version
            lines.append(f'add element inet {TABLE} a{v}_{nid} {{ {iface.ip} comment "{att.tag}" }}')
            lines.append(f'add element inet {TABLE} p{v}_{nid} {{ {iface.ip} . {_subnet(iface)} comment "{att.tag}" }}')
        with locked():
            _nft_apply("\n".join(lines) + "\n", f"install masquerading for {att.network!r}")

    def _remove(self, network: str, keep: Callable[[str], bool]) -> None:
        nid = network_id(network)
        with locked():
            objects = _nft_list("inet", TABLE)
            if objects is None:
                return
            remove = []
            for name, items in _elements(objects).items():
                if name.endswith("_" + nid):
                    remove += [(name, k) for k, tag in items if tag.startswith(nid + ":") and not keep(key_of(tag))]
            chains = [o["chain"]["name"] for o in objects if "chain" in o]
            if not remove and f"masq_{nid}" not in chains:
                return
            script = _prune("inet", TABLE, objects, remove, {nid})
            if script:
                _nft_apply(script, f"remove masquerading for {network!r}")

    def teardown(self, att: Attachment) -> None:
        self._remove(att.network, lambda key: key != att.key)

    def gc(self, network: str, valid_keys: set[str]) -> None:
        self._remove(network, lambda key: key in valid_keys)


# -- iptables -------------------------------------------------------------------------------------


class Iptables:
    """Masquerade with one nat chain `PYCNI-MASQ-<id>` per network and two rules per pod address."""

    name = "iptables"

    @staticmethod
    def _tools(v: int) -> tuple[str, str, str]:
        return ("iptables", "iptables-save", "iptables-restore") if v == 4 else (
            "ip6tables", "ip6tables-save", "ip6tables-restore")

    def available(self) -> bool:
        return shutil.which("iptables") is not None and shutil.which("iptables-restore") is not None

    @staticmethod
    def chain(network: str) -> str:
        return f"PYCNI-MASQ-{network_id(network)}"  # 21 chars (iptables allows 28)

    def _ensure_chain(self, v: int, network: str) -> None:
        ipt = self._tools(v)[0]
        chain = self.chain(network)
        if _run([ipt, "-w", "-t", "nat", "-S", chain]).returncode == 0:
            return
        comment = f"pycni network {_SAFE.sub('_', network)}"[:250]
        mcast = "224.0.0.0/4" if v == 4 else "ff00::/8"
        _check(_run([ipt, "-w", "-t", "nat", "-N", chain]), f"create chain {chain}")
        _check(_run([ipt, "-w", "-t", "nat", "-A", chain, "-d", mcast, "-j", "RETURN"]), f"fill chain {chain}")
        _check(_run([ipt, "-w", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", comment,
                     "-j", chain]), f"jump to chain {chain}")

    def setup(self, att: Attachment, addrs: list) -> None:
        chain = self.chain(att.network)
        with locked():
            for v in (4, 6):
                mine = [a for a in addrs if a.version == v]
                if not mine:
                    continue
                self._ensure_chain(v, att.network)
                rules = ["*nat"]
                for iface in mine:
                    tag = f'-m comment --comment "{att.tag}"'
                    rules.append(f"-A {chain} -s {iface.ip} -d {_subnet(iface)} {tag} -j RETURN")
                    rules.append(f"-A {chain} -s {iface.ip} {tag} -j MASQUERADE")
                rules.append("COMMIT")
                restore = self._tools(v)[2]
                _check(_run([restore, "-w", "--noflush"], stdin="\n".join(rules) + "\n"),
                       f"install masquerading for {att.network!r}")

    def _remove(self, network: str, keep: Callable[[str], bool]) -> None:
        chain = self.chain(network)
        nid = network_id(network)
        with locked():
            for v in (4, 6):
                _, save, restore = self._tools(v)
                if shutil.which(save) is None:
                    continue
                proc = _run([save, "-t", "nat"])
                if proc.returncode != 0 or f":{chain} " not in proc.stdout:
                    continue
                mine = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"-A {chain} ")]
                drop, left = [], 0
                for line in mine:
                    m = re.search(r'--comment "?(' + nid + r':[0-9a-f]+)', line)
                    if m is None:
                        continue  # the chain's own multicast RETURN
                    if keep(key_of(m.group(1))):
                        left += 1
                    else:
                        drop.append("-D" + line[2:])
                script = ["*nat", *drop]
                if not left:
                    jumps = [ln for ln in proc.stdout.splitlines() if ln.startswith("-A POSTROUTING ")
                             and ln.endswith(f"-j {chain}")]
                    script += ["-D" + ln[2:] for ln in jumps]
                    script += [f"-F {chain}", f"-X {chain}"]
                if len(script) == 1:
                    continue
                script.append("COMMIT")
                _check(_run([restore, "-w", "--noflush"], stdin="\n".join(script) + "\n"),
                       f"remove masquerading for {network!r}")

    def teardown(self, att: Attachment) -> None:
        self._remove(att.network, lambda key: key != att.key)

    def gc(self, network: str, valid_keys: set[str]) -> None:
        self._remove(network, lambda key: key in valid_keys)


BACKENDS: dict[str, Backend] = {"nftables": Nftables(), "iptables": Iptables()}


def pick(name: str | None) -> Backend:
    """`ipMasqBackend`, or what the node has: nftables when `nft` exists, else iptables."""
    if name:
        backend = BACKENDS.get(name)
        if backend is None:
            raise CNIError(INVALID_CONFIG, f"unknown ipMasqBackend {name!r}", "use 'nftables' or 'iptables'")
        if not backend.available():
            raise CNIError(KERNEL, f"ipMasqBackend {name!r} requested but its tools are not installed")
        return backend
    for backend in BACKENDS.values():
        if backend.available():
            return backend
    raise CNIError(KERNEL, "ipMasq needs nft or iptables on the node; neither was found")


def teardown(att: Attachment, preferred: str | None = None) -> list[CNIError]:
    """Remove an attachment's entries from every available backend (it may have been created with
    another backend or configuration); returns the errors instead of stopping at the first."""
    errors = []
    order = sorted(BACKENDS.values(), key=lambda b: b.name != (preferred or "nftables"))
    for backend in order:
        if backend.available():
            try:
                backend.teardown(att)
            except CNIError as err:
                errors.append(err)
    return errors


def gc(network: str, valid: Iterable[tuple[str, str]]) -> list[CNIError]:
    keys = {Attachment(network, cid, ifname).key for cid, ifname in valid}
    errors = []
    for backend in BACKENDS.values():
        if backend.available():
            try:
                backend.gc(network, keys)
            except CNIError as err:
                errors.append(err)
    return errors


# -- MAC spoof check (nftables, bridge family) ----------------------------------------------------


def spoofcheck_setup(att: Attachment, host_veth: str, mac: str) -> None:
    """`macspoofchk`: frames entering the bridge from `host_veth` must carry the pod's MAC.

    One `bridge pycni_spoofchk` table for all networks: a set of checked ports and a set of
    allowed (port, MAC) pairs, each element tagged with the attachment key.
    """
    if shutil.which("nft") is None:
        raise CNIError(KERNEL, "macspoofchk needs nft on the node")
    t = f"bridge {SPOOF_TABLE}"
    script = "\n".join([
        f"add table {t}",
        f"add set {t} ports {{ type ifname; }}",
        f"add set {t} allowed {{ type ifname . ether_addr; }}",
        f"add chain {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}",
        f"flush chain {t} prerouting",
        f"add rule {t} prerouting iifname @ports iifname . ether saddr != @allowed drop",
        f'add element {t} ports {{ "{host_veth}" comment "{att.tag}" }}',
        f'add element {t} allowed {{ "{host_veth}" . {mac} comment "{att.tag}" }}',
    ]) + "\n"
    with locked():
        _nft_apply(script, f"install the MAC spoof check on {host_veth!r}")


def _spoof_remove(network: str, keep: Callable[[str], bool]) -> None:
    if shutil.which("nft") is None:
        return
    nid = network_id(network)
    with locked():
        objects = _nft_list("bridge", SPOOF_TABLE)
        if objects is None:
            return
        elements = _elements(objects)
        remove = [(s, k) for s, items in elements.items() for k, tag in items
                  if tag.startswith(nid + ":") and not keep(key_of(tag))]
        if not remove:
            return
        left = sum(len(items) for items in elements.values()) - len(remove)
        lines = [f"delete element bridge {SPOOF_TABLE} {s} {{ {k} }}" for s, k in remove]
        if left <= 0:
            lines = [f"delete table bridge {SPOOF_TABLE}"]
        _nft_apply("\n".join(lines) + "\n", "remove the MAC spoof check")


def spoofcheck_teardown(att: Attachment) -> None:
    _spoof_remove(att.network, lambda key: key != att.key)


def spoofcheck_gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    keys = {Attachment(network, cid, ifname).key for cid, ifname in valid}
    _spoof_remove(network, lambda key: key in keys)
