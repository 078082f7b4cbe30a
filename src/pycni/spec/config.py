"""Network configuration (SPEC.md "Section 1: Network configuration format", "Section 3: Execution of
Network Configurations" for the runtime-inserted keys `runtimeConfig`, `args` and `prevResult").

`decode` turns stdin into a JSON object (code 6 on failure), `NetConf` is the part every plugin
shares; plugins subclass it with their own keys. A pydantic validation error becomes code 7 and
names the field at fault.

Decoding is as strict as the Go reference's `encoding/json` into typed structs: a string is not a
number, a number is not a boolean, 1500.0 is not an int ("cannot unmarshal number 1500.0 into Go
struct field of type int"), and integers are bounded by the type the kernel or libcni gives them.
Like Go, a JSON `null` for a field that cannot be null leaves the field at its default.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .env import MAX_CONFIG_BYTES, valid_name
from .errors import DECODE_FAILURE, INVALID_CONFIG, CNIError
from .result import DNS, Result


def decode(stdin: bytes) -> dict:
    """SPEC.md "Parameters": the configuration arrives on stdin as one JSON object."""
    if len(stdin) > MAX_CONFIG_BYTES:
        raise CNIError(INVALID_CONFIG, "network configuration too large", f"{len(stdin)} bytes > {MAX_CONFIG_BYTES}")
    try:
        data = json.loads(stdin.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CNIError(DECODE_FAILURE, "failed to decode the network configuration", str(exc)[:300]) from None
    except RecursionError:  # thousands of nested [ or { fit in 1 MiB; Go's decoder refuses them too
        raise CNIError(DECODE_FAILURE, "failed to decode the network configuration", "nested too deeply") from None
    if not isinstance(data, dict):
        raise CNIError(DECODE_FAILURE, "the network configuration must be a JSON object", type(data).__name__)
    return data


def _refuse_constant(name: str) -> object:
    """RFC 8259 has no NaN or Infinity; Python's json accepts them, the Go decoder libcni uses does not."""
    raise ValueError(f"invalid JSON literal {name}")


def version_of(data: dict) -> str:
    """SPEC.md: a configuration without cniVersion is 0.1.0 (as libcni's ConfigDecoder)."""
    value = data.get("cniVersion", "")
    if value == "":
        return "0.1.0"
    if not isinstance(value, str):
        raise CNIError(DECODE_FAILURE, "cniVersion must be a string", repr(value)[:100])
    return value


def _nullable(annotation: object) -> bool:
    return annotation is None or annotation is Any or (
        typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation))


class Model(BaseModel):
    """Base of every config model: unknown keys are kept (SPEC.md: plugins may ignore unknown fields),
    known keys are decoded strictly (module docstring)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: object) -> object:
        """Go's encoding/json: "unmarshaling a JSON null into any other Go type has no effect"."""
        if not isinstance(data, dict) or None not in data.values():
            return data
        drop = _NOT_NULLABLE.get(cls)
        if drop is None:  # worked out once per model class (a daemon validates thousands of configs)
            keys: set[str] = set()
            for name, field in cls.model_fields.items():
                if not _nullable(field.annotation):
                    keys.add(name)
                    if field.alias:
                        keys.add(field.alias)
            _NOT_NULLABLE[cls] = drop = frozenset(keys)
        return {k: v for k, v in data.items() if not (v is None and k in drop)}


_NOT_NULLABLE: dict[type, frozenset[str]] = {}  # model class -> keys whose null means "absent"


class IPRange(Model):
    """One range of a range set (CONVENTIONS.md "ipRanges"; host-local's `ranges`): its addresses are
    checked by pycni.ipam.ranges."""

    subnet: str = ""
    rangeStart: str | None = None
    rangeEnd: str | None = None
    gateway: str | None = None


class PortMapping(Model):
    """CONVENTIONS.md "portMappings" (used by portmap, only carried by pycni)."""

    hostPort: int = Field(default=0, ge=0, le=65535)
    containerPort: int = Field(default=0, ge=0, le=65535)
    protocol: str = ""
    hostIP: str = ""


class RuntimeDNS(Model):
    """CONVENTIONS.md "dns" capability: {servers, searches, options}."""

    servers: list[str] = Field(default_factory=list)
    searches: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class RuntimeConfig(Model):
    """CONVENTIONS.md "Dynamic Plugin specific fields (Capabilities / Runtime Configuration)"."""

    ips: list[str] = Field(default_factory=list)
    mac: str = ""
    ipRanges: list[list[IPRange]] = Field(default_factory=list)
    portMappings: list[PortMapping] = Field(default_factory=list)
    dns: RuntimeDNS | None = None


class ArgsCni(Model):
    """CONVENTIONS.md "args in network config": `args.cni.ips` and `args.cni.mac`."""

    ips: list[str] = Field(default_factory=list)
    mac: str = ""


class Args(Model):
    cni: ArgsCni = Field(default_factory=ArgsCni)


class IPAM(Model):
    """SPEC.md "Section 1: Network configuration format": `ipam` (dictionary, optional) with
    `type` (string), "the filename of the IPAM plugin executable", so required and a file name.
    The IPAM plugin's own keys are kept (extra) and decoded by that plugin (pycni.ipam.config)."""

    type: str

    @field_validator("type")
    @classmethod
    def _file_name(cls, value: str) -> str:
        if not valid_name(value):  # no '/', no '..', nothing a path lookup could be tricked with
            raise ValueError("ipam.type must be the file name of an IPAM plugin")
        return value


class NetConf(Model):
    cniVersion: str
    name: str
    type: str
    capabilities: dict[str, bool] = Field(default_factory=dict)
    ipam: IPAM | None = None
    dns: DNS | None = None
    runtimeConfig: RuntimeConfig = Field(default_factory=RuntimeConfig)
    args: Args = Field(default_factory=Args)
    prevResult: dict[str, Any] | None = None
    # SPEC.md "GC": cni.dev/valid-attachments (and the older cni.dev/attachments) are read by
    # pycni.spec.gc only, from the raw configuration.
    # pycni's own logging keys (optional): where and how much to log.
    logFile: str = ""
    logLevel: str = ""
    logFormat: Literal["", "plain", "json"] = ""  # pycni.logfmt

    @field_validator("ipam", mode="before")
    @classmethod
    def _empty_ipam(cls, value: object) -> object:
        """`"ipam": {}` is the usual way to say "no IPAM" (layer 2 only), as the reference bridge reads
        it; any other ipam object needs its `type` (IPAM)."""
        return None if value == {} else value

    @property
    def ipam_type(self) -> str:
        """The IPAM plugin to run, "" for none: the one place that reads `ipam.type`."""
        return self.ipam.type if self.ipam is not None else ""

    def prev_result(self) -> Result | None:
        """SPEC.md "Chained Plugins": prevResult, converted to one model whatever its version."""
        if self.prevResult is None:
            return None
        return Result.parse(self.prevResult)


def load(model: type[NetConf], data: dict) -> NetConf:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CNIError(INVALID_CONFIG, "invalid network configuration", describe(exc)) from None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)
