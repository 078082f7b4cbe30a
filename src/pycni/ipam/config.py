"""host-local configuration: the `ipam` object of the network configuration.

Keys (as the reference host-local): `ranges` (list of range sets), the legacy single range
`subnet`/`rangeStart`/`rangeEnd`/`gateway`, `routes`, `dataDir`, `resolvConf`. Requested addresses
come from `runtimeConfig.ips` (CONVENTIONS.md "ips" capability), `args.cni.ips` (CONVENTIONS.md
"args in network config") and CNI_ARGS `IP=` (comma-separated); `runtimeConfig.ipRanges`
(CONVENTIONS.md "ipRanges" capability) replaces the configured ranges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import Field

from ..spec.config import IPAM, IPRange, NetConf
from ..spec.env import CniArgs, valid_name
from ..spec.errors import INVALID_CONFIG, INVALID_ENV, CNIError
from ..spec.result import Route
from .ranges import IPAddress, Range, RangeSet, parse_ip

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


class IPAMModel(IPAM):
    """host-local's `ipam` object (the reference's IPAMConfig), `type` included (spec.config.IPAM)."""

    ranges: list[list[IPRange]] = Field(default_factory=list)
    subnet: str = ""  # legacy single range
    rangeStart: str | None = None
    rangeEnd: str | None = None
    gateway: str | None = None
    routes: list[Route] = Field(default_factory=list)
    dataDir: str = DEFAULT_DATA_DIR
    resolvConf: str = ""


class Config(NetConf):
    """The network configuration as host-local sees it: only `ipam` matters."""

    ipam: IPAMModel


@dataclass(frozen=True)
class IPAMConfig:
    """Canonical, validated host-local settings for one request."""

    network: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...]
    data_dir: str
    resolv_conf: str
    requested: tuple[IPAddress, ...]


def configured_ranges(ipam: IPAMModel) -> list[list[IPRange]]:
    """The range sets the configuration names: the legacy single range first, then `ranges`."""
    raw_sets: list[list[IPRange]] = []
    if ipam.subnet:
        raw_sets.append([IPRange(subnet=ipam.subnet, rangeStart=ipam.rangeStart, rangeEnd=ipam.rangeEnd,
                                 gateway=ipam.gateway)])
    raw_sets.extend(ipam.ranges)
    return raw_sets


def build_range_sets(raw_sets: list[list[IPRange]]) -> list[RangeSet]:
    """Validated range sets: each range well-formed, one family per set, no overlap within or across sets."""
    if not raw_sets:
        raise CNIError(INVALID_CONFIG, "no IP ranges specified", "set ipam.ranges or ipam.subnet")
    sets = []
    for i, raw in enumerate(raw_sets):
        ranges = [Range.build(r.subnet, r.rangeStart, r.rangeEnd, r.gateway, where=f"ipam.ranges[{i}][{j}]")
                  for j, r in enumerate(raw)]
        sets.append(RangeSet.build(ranges, where=f"ipam.ranges[{i}]"))
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if a.overlaps(sets[j]):
                raise CNIError(INVALID_CONFIG, f"range set {i} overlaps with {j}")
    return sets


def _range_sets(conf: Config) -> list[RangeSet]:
    # CONVENTIONS.md "ipRanges": the runtime's ranges replace the configured ones.
    return build_range_sets(conf.runtimeConfig.ipRanges or configured_ranges(conf.ipam))


def _requested(conf: Config, cni_args: CniArgs) -> list[IPAddress]:
    out: list[IPAddress] = []
    sources = [("runtimeConfig.ips", conf.runtimeConfig.ips), ("args.cni.ips", conf.args.cni.ips)]
    env_ips = cni_args.get("IP")
    if env_ips:
        sources.append(("CNI_ARGS IP", env_ips.split(",")))
    for where, values in sources:
        for value in values:
            try:
                ip = parse_ip(value, where)
            except CNIError as err:
                if where.startswith("CNI_ARGS"):  # a bad CNI_ARGS value is a bad environment (code 4)
                    err.code = INVALID_ENV
                raise
            if ip not in out:
                out.append(ip)
    return out


def data_dir(value: str) -> str:
    if not value or not os.path.isabs(value) or "\x00" in value:
        raise CNIError(INVALID_CONFIG, "ipam.dataDir must be an absolute path", repr(value)[:200])
    if any(part == ".." for part in value.split("/")):
        raise CNIError(INVALID_CONFIG, "ipam.dataDir must not contain '..'", repr(value)[:200])
    return os.path.normpath(value)


def ipam_config(conf: Config, cni_args: CniArgs) -> IPAMConfig:
    # The network name becomes a directory name: the spec's name rule keeps it a single path element.
    if not valid_name(conf.name):
        raise CNIError(INVALID_CONFIG, "invalid characters found in network name", repr(conf.name)[:200])
    sets = _range_sets(conf)
    return IPAMConfig(
        network=conf.name,
        range_sets=tuple(sets),
        routes=tuple(conf.ipam.routes),
        data_dir=data_dir(conf.ipam.dataDir),
        resolv_conf=conf.ipam.resolvConf,
        requested=tuple(_requested(conf, cni_args)),
    )
