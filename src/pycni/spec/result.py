"""The Success result (SPEC.md "Result Types" / "ADD Success") and its conversion between versions.

One model holds every version's content; `to_dict(version)` prints it the way that version's Go
types do (0.3.x/0.4.0 carry `ips[].version`, 1.1.0 adds route table/scope/mtu/advmss/priority and
interface mtu/socketPath/pciID; an empty `dns` is printed by 0.3.x/0.4.0 and left out by 1.0.0+, as
libcni 1.3's types do - libcni 1.1 printed `"dns": {}` in 1.0.0 too), and `Result.parse` reads a prevResult of
any version, 0.2.0's `ip4`/`ip6` shape included.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import version as versions
from .errors import DECODE_FAILURE, CNIError


def _interface(value: str) -> str:
    return str(ipaddress.ip_interface(value))


def _address(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _network(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


# Route attributes are kernel u32s (RTAX_MTU, RTAX_ADVMSS, RTA_PRIORITY, RTA_TABLE; IFLA_MTU), the
# scope a u8 (rtm_scope): a larger number is an invalid configuration, not a netlink failure.
U32_MAX = 2**32 - 1
U8_MAX = 255


class _Model(BaseModel):
    """Strict like the Go types (types/100, types/040...) that libcni decodes results into."""

    model_config = ConfigDict(extra="ignore", frozen=False, strict=True)


class Interface(_Model):
    name: str
    mac: str = ""
    mtu: int | None = Field(default=None, ge=0, le=U32_MAX)
    sandbox: str = ""
    socketPath: str = ""
    pciID: str = ""

    def to_dict(self, version: str) -> dict:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        new = versions.at_least(version, "1.1.0")
        if new and self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if new and self.socketPath:
            out["socketPath"] = self.socketPath
        if new and self.pciID:
            out["pciID"] = self.pciID
        return out


class IPConfig(_Model):
    address: str  # interface form, "10.1.0.2/24"
    gateway: str | None = None
    interface: int | None = Field(default=None, ge=0)

    @field_validator("address")
    @classmethod
    def _canonical_address(cls, value: str) -> str:
        return _interface(value)

    @field_validator("gateway")
    @classmethod
    def _canonical_gateway(cls, value: str | None) -> str | None:
        return _address(value) if value else None

    @property
    def family(self) -> int:
        return ipaddress.ip_interface(self.address).version

    def to_dict(self, version: str) -> dict:
        out: dict[str, Any] = {}
        if not versions.at_least(version, "1.0.0"):
            out["version"] = str(self.family)  # required in 0.3.x / 0.4.0
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = self.address
        if self.gateway:
            out["gateway"] = self.gateway
        return out


class Route(_Model):
    dst: str
    gw: str | None = None
    mtu: int | None = Field(default=None, ge=0, le=U32_MAX)
    advmss: int | None = Field(default=None, ge=0, le=U32_MAX)
    priority: int | None = Field(default=None, ge=0, le=U32_MAX)
    table: int | None = Field(default=None, ge=0, le=U32_MAX)
    scope: int | None = Field(default=None, ge=0, le=U8_MAX)

    @field_validator("dst")
    @classmethod
    def _canonical_dst(cls, value: str) -> str:
        return _network(value)

    @field_validator("gw")
    @classmethod
    def _canonical_gw(cls, value: str | None) -> str | None:
        return _address(value) if value else None

    @property
    def family(self) -> int:
        return ipaddress.ip_network(self.dst).version

    def to_dict(self, version: str) -> dict:
        out: dict[str, Any] = {"dst": self.dst}
        if self.gw:
            out["gw"] = self.gw
        if versions.at_least(version, "1.1.0"):
            for key in ("mtu", "advmss", "priority", "table", "scope"):
                value = getattr(self, key)
                if value is not None and (value != 0 or key == "scope"):
                    out[key] = value
        return out


class DNS(_Model):
    nameservers: list[str] = Field(default_factory=list)
    domain: str = ""
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


class Result(_Model):
    cniVersion: str = versions.LATEST
    interfaces: list[Interface] = Field(default_factory=list)
    ips: list[IPConfig] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    dns: DNS = Field(default_factory=DNS)

    def to_dict(self, version: str) -> dict:
        """Print in `version` (SPEC.md "Version considerations": the result uses the config's version)."""
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_dict(version) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(version) for r in self.routes]
        dns = self.dns.to_dict()
        if dns or not versions.at_least(version, "1.0.0"):
            out["dns"] = dns
        return out

    @classmethod
    def parse(cls, data: object) -> Result:
        """Read a result of any supported version (prevResult, or a delegated plugin's output)."""
        if not isinstance(data, dict):
            raise CNIError(DECODE_FAILURE, "result must be a JSON object", type(data).__name__)
        data = dict(data)
        if "ip4" in data or "ip6" in data:
            data = _from_020(data)
        for ip in data.get("ips") or []:
            if isinstance(ip, dict) and "version" in ip:
                if ip["version"] not in ("4", "6"):
                    raise CNIError(DECODE_FAILURE, "invalid ips[].version", repr(ip["version"]))
                try:
                    fam = ipaddress.ip_interface(ip.get("address", "")).version
                except ValueError:
                    fam = None
                if fam is not None and str(fam) != ip["version"]:
                    raise CNIError(DECODE_FAILURE, "ips[].version does not match the address", repr(ip))
        if data.get("dns") is None:
            data.pop("dns", None)
        for key in ("interfaces", "ips", "routes"):
            if data.get(key) is None:
                data.pop(key, None)
        try:
            result = cls.model_validate(data)
        except ValidationError as exc:
            raise CNIError(DECODE_FAILURE, "invalid result", _short(exc)) from None
        for ip in result.ips:
            if ip.interface is not None and ip.interface >= len(result.interfaces):
                raise CNIError(DECODE_FAILURE, "ips[].interface points past interfaces[]", repr(ip.interface))
        return result


def _from_020(data: dict) -> dict:
    """0.2.0 had {"ip4": {"ip", "gateway", "routes"}, "ip6": {...}, "dns"}."""
    ips: list[dict] = []
    routes: list = []
    for key in ("ip4", "ip6"):
        block = data.get(key)
        if not block:
            continue
        if not isinstance(block, dict):
            raise CNIError(DECODE_FAILURE, f"invalid {key} in result", repr(block)[:200])
        ip = {"address": block.get("ip")}
        if block.get("gateway"):
            ip["gateway"] = block["gateway"]
        ips.append(ip)
        routes.extend(block.get("routes") or [])
    return {"cniVersion": data.get("cniVersion", "0.2.0"), "ips": ips, "routes": routes, "dns": data.get("dns") or {}}


def _short(exc: ValidationError) -> str:  # config.describe, without the import cycle
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)
