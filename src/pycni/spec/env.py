"""The CNI_* environment (SPEC.md "Parameters") and the validation the Go skeleton performs.

Validation here is the first line of defence: container IDs, interface names and network names
are untrusted strings that later become file names (IPAM store) and netlink names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import INVALID_CONFIG, INVALID_ENV, CNIError

VERBS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# SPEC.md "Parameters": which variables each verb requires (as the Go skel's reqForCmd;
# STATUS and GC take CNI_PATH per SPEC.md "STATUS" / "GC").
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),  # DEL may come without a netns
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
    "VERSION": (),
}

# SPEC.md "Parameters": container ID "must only contain alphanumeric characters, hyphens, underscores
# and periods", starting with an alphanumeric; the network name uses the same rule (libcni).
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
MAX_IFNAME = 15  # IFNAMSIZ - 1
MAX_CONFIG_BYTES = 1 << 20  # stdin larger than 1 MiB is refused (no real configuration comes close)


def valid_name(value: str) -> bool:
    return bool(_NAME_RE.fullmatch(value))


def validate_container_id(container_id: str) -> None:
    if not valid_name(container_id):
        raise CNIError(INVALID_ENV, "invalid characters in CNI_CONTAINERID", repr(container_id)[:300])


def validate_network_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise CNIError(INVALID_CONFIG, "missing network name", "the configuration needs a non-empty 'name'")
    if not valid_name(name):
        raise CNIError(INVALID_CONFIG, "invalid characters found in network name", repr(name)[:300])


def validate_ifname(ifname: str) -> None:
    """SPEC.md "Parameters" CNI_IFNAME; the limits are Linux's (IFNAMSIZ, no '/', ':' or blanks)."""
    if not ifname:
        raise CNIError(INVALID_ENV, "interface name is empty")
    if len(ifname) > MAX_IFNAME:
        raise CNIError(INVALID_ENV, "interface name is too long", f"at most {MAX_IFNAME} characters: {ifname!r}")
    if ifname in (".", ".."):
        raise CNIError(INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() or not c.isprintable() for c in ifname):
        raise CNIError(INVALID_ENV, "interface name contains / or : or whitespace characters", repr(ifname))


def validate_netns(netns: str) -> None:
    if "\x00" in netns or not netns.startswith("/"):
        raise CNIError(INVALID_ENV, "CNI_NETNS must be an absolute path", repr(netns)[:300])


@dataclass(frozen=True)
class CniArgs:
    """CNI_ARGS "K=V;K=V" (CONVENTIONS.md "CNI_ARGS").

    Keys a plugin does not know are an error unless IgnoreUnknown is 1/true, as in the Go
    types.LoadArgs; the K8S_* keys Kubernetes runtimes send always come with IgnoreUnknown=1.
    """

    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        return self.values.get(key)


def _parse_bool(key: str, value: str) -> bool:
    low = value.lower()
    if low in ("1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise CNIError(INVALID_ENV, f"CNI_ARGS: {key} must be a boolean (1/0/true/false)", repr(value))


def parse_cni_args(raw: str, known: frozenset[str] | set[str]) -> CniArgs:
    values: dict[str, str] = {}
    if not raw:
        return CniArgs(values)
    for pair in raw.split(";"):
        if pair == "":
            continue  # tolerate "K=V;" (the Go parser refuses it; nothing is ambiguous about it)
        key, sep, value = pair.partition("=")
        if not sep or not key or "=" in value:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: invalid pair {pair[:100]!r}", "expected K=V;K=V")
        values[key] = value
    ignore_unknown = _parse_bool("IgnoreUnknown", values["IgnoreUnknown"]) if "IgnoreUnknown" in values else False
    unknown = sorted(k for k in values if k not in known and k != "IgnoreUnknown")
    if unknown and not ignore_unknown:
        raise CNIError(
            INVALID_ENV,
            f"CNI_ARGS: unknown args {unknown}",
            "set IgnoreUnknown=1 to ignore keys this plugin does not use",
        )
    return CniArgs(values)


@dataclass(frozen=True)
class Environment:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""
    path: tuple[str, ...] = ()


def read_environment(environ: dict[str, str] | None = None) -> Environment:
    """Read and validate CNI_* for the requested verb; any problem is code 4 (SPEC.md "Error")."""
    import os

    env = os.environ if environ is None else environ
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in VERBS:
        raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {command[:50]!r}")
    missing = [name for name in REQUIRED[command] if not env.get(name)]
    if missing:
        raise CNIError(INVALID_ENV, f"required env variables {missing} missing")
    result = Environment(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=env.get("CNI_ARGS", ""),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
    )
    if command in ("ADD", "CHECK", "DEL"):
        validate_container_id(result.container_id)
        validate_ifname(result.ifname)
    # Only the verbs that use CNI_NETNS check it: libcni's VERSION probe (podman runs it for every
    # plugin of a conflist) sends CNI_NETNS=dummy, CNI_IFNAME=dummy, CNI_PATH=dummy. DEL does not use
    # it either (SPEC.md "DEL": CNI_NETNS is optional; the host veth and the leases are found by
    # container ID and ifname), so a DEL with a relative or garbage CNI_NETNS still releases
    # everything - as the Go bridge, which releases the lease before it looks at the namespace.
    if result.netns and command in ("ADD", "CHECK"):
        validate_netns(result.netns)
    return result
