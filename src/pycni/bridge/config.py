"""The bridge plugin's configuration: the reference bridge's keys, its defaults, and validation.

SPEC.md "Section 1: Network configuration format" lets a plugin define its own keys; these are the
ones of containernetworking/plugins `plugins/main/bridge` (README "Network configuration
reference"), with the same defaults (`bridge` = "cni0", `preserveDefaultVlan` = true).
Untrusted strings are validated here, before anything reaches netlink: every problem is code 7
(SPEC.md "Error": invalid network config) naming the field at fault.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..spec.config import Model, NetConf
from ..spec.env import MAX_IFNAME
from ..spec.errors import INVALID_CONFIG, INVALID_ENV, CNIError

DEFAULT_BRIDGE = "cni0"
MIN_MTU, MAX_MTU = 68, 65535  # Linux: ETH_MIN_MTU .. IP_MAX_MTU
MAX_VLAN = 4094  # 802.1Q: 0 and 4095 are reserved; 0 here means "no VLAN"
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")


def check_ifname(value: str, field: str) -> str:
    """Linux interface-name rules (IFNAMSIZ, no '/', ':' or blanks), as for CNI_IFNAME."""
    if not value or len(value) > MAX_IFNAME or value in (".", "..") or any(
        c in "/:" or c.isspace() or not c.isprintable() for c in value
    ):
        raise ValueError(f"{field} must be a valid interface name (1-{MAX_IFNAME} chars, no '/', ':' or blanks)")
    return value


def normalize_mac(value: str, source: str) -> str:
    """A unicast MAC as aa:bb:cc:dd:ee:ff; `source` names where it came from (code 7 otherwise)."""
    if not _MAC_RE.fullmatch(value or ""):
        raise CNIError(INVALID_CONFIG, f"invalid MAC address in {source}", repr(value)[:100])
    digits = re.sub(r"[:-]", "", value).lower()
    mac = ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    if int(digits[:2], 16) & 1:
        raise CNIError(INVALID_CONFIG, f"MAC address in {source} is a multicast address", mac)
    if digits == "0" * 12:
        raise CNIError(INVALID_CONFIG, f"MAC address in {source} is all zeroes", mac)
    return mac


class VlanTrunk(Model):
    """One `vlanTrunk` entry: either `id`, or `minID` and `maxID` together (reference semantics)."""

    minID: int | None = Field(default=None, ge=1, le=MAX_VLAN)
    maxID: int | None = Field(default=None, ge=1, le=MAX_VLAN)
    id: int | None = Field(default=None, ge=1, le=MAX_VLAN)

    @model_validator(mode="after")
    def _pairs(self) -> VlanTrunk:
        if (self.minID is None) != (self.maxID is None):
            raise ValueError("minID and maxID must be configured together")
        if self.minID is not None and self.maxID is not None and self.maxID < self.minID:
            raise ValueError("minID is greater than maxID")
        return self

    def ids(self) -> set[int]:
        out = set(range(self.minID, self.maxID + 1)) if self.minID is not None and self.maxID is not None else set()
        if self.id is not None:
            out.add(self.id)
        return out


class BridgeConf(NetConf):
    bridge: str = DEFAULT_BRIDGE
    isGateway: bool = False
    isDefaultGateway: bool = False
    forceAddress: bool = False
    ipMasq: bool = False
    ipMasqBackend: Literal["iptables", "nftables"] | None = None
    mtu: int = Field(default=0, ge=0, le=MAX_MTU)
    hairpinMode: bool = False
    promiscMode: bool = False
    vlan: int = Field(default=0, ge=0, le=MAX_VLAN)
    vlanTrunk: list[VlanTrunk] | None = None
    preserveDefaultVlan: bool = True
    macspoofchk: bool = False
    enabledad: bool = False
    disableContainerInterface: bool = False
    portIsolation: bool = False

    @field_validator("bridge")
    @classmethod
    def _bridge_name(cls, value: str) -> str:
        return check_ifname(value, "bridge")

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, value: int) -> int:
        if value and value < MIN_MTU:
            raise ValueError(f"mtu must be 0 (kernel default) or {MIN_MTU}-{MAX_MTU}")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> BridgeConf:
        # Reference bridge: isDefaultGateway implies isGateway.
        if self.isDefaultGateway:
            self.isGateway = True
        if self.hairpinMode and self.promiscMode:
            raise ValueError("cannot set hairpinMode and promiscMode at the same time")
        if self.vlan and self.trunk_vlans():
            raise ValueError("cannot set vlan and vlanTrunk at the same time")
        if self.disableContainerInterface and self.ipam_type:
            raise ValueError("cannot use ipam when disableContainerInterface is set")
        if self.vlan and self.isGateway:
            check_ifname(self.vlan_gateway_name, "bridge (with the '.<vlan>' suffix of the VLAN gateway)")
        return self

    # -- derived values ---------------------------------------------------------------------------

    def trunk_vlans(self) -> list[int]:
        ids: set[int] = set()
        for item in self.vlanTrunk or []:
            ids |= item.ids()
        return sorted(ids)

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan or self.vlanTrunk)

    @property
    def vlan_gateway_name(self) -> str:
        """Reference bridge: with `vlan` and `isGateway` the gateway lives on `<bridge>.<vlan>`."""
        return f"{self.bridge}.{self.vlan}"

    def container_mac(self, env_mac: str | None) -> str:
        """CONVENTIONS.md: runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC= (reference order)."""
        for value, source in (
            (self.runtimeConfig.mac, "runtimeConfig.mac"),
            (self.args.cni.mac, "args.cni.mac"),
            (env_mac or "", "CNI_ARGS MAC"),
        ):
            if value:
                try:
                    return normalize_mac(value, source)
                except CNIError as err:
                    if source == "CNI_ARGS MAC":  # a bad CNI_ARGS value is a bad environment (as IP=)
                        err.code = INVALID_ENV
                    raise
        return ""


Config = BridgeConf
