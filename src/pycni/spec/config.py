"""Network configuration (SPEC.md "Section 1: Network configuration format", "Section 3: Execution of
Network Configurations" for the runtime-inserted keys `runtimeConfig`, `args` and `prevResult").

`decode` turns stdin into a JSON object (code 6 on failure), `NetConf` is the part every plugin
shares; plugins subclass it with their own keys. A pydantic validation error becomes code 7 and
names the field at fault.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .env import MAX_CONFIG_BYTES
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


class Model(BaseModel):
    """Base of every config model: unknown keys are kept (SPEC.md: plugins may ignore unknown fields)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RuntimeConfig(Model):
    """CONVENTIONS.md "Dynamic Plugin specific fields (Capabilities / Runtime Configuration)"."""

    ips: list[str] = Field(default_factory=list)
    mac: str = ""
    ipRanges: list[list[dict]] = Field(default_factory=list)
    portMappings: list[dict] = Field(default_factory=list)
    dns: dict | None = None


class ArgsCni(Model):
    """CONVENTIONS.md "args in network config": `args.cni.ips` and `args.cni.mac`."""

    ips: list[str] = Field(default_factory=list)
    mac: str = ""


class Args(Model):
    cni: ArgsCni = Field(default_factory=ArgsCni)


class NetConf(Model):
    cniVersion: str
    name: str
    type: str
    capabilities: dict[str, bool] = Field(default_factory=dict)
    ipam: dict[str, Any] | None = None
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
