"""What NetworkPolicy enforcement needs to know of the cluster: pydantic models of the subsets of
`v1.Pod`, `v1.Namespace` and `networking.k8s.io/v1.NetworkPolicy` that decide who may talk to whom,
and label selector matching.

References (Kubernetes API, v1.34): `NetworkPolicySpec`, `NetworkPolicyPeer`, `NetworkPolicyPort`,
`IPBlock` (k8s.io/api/networking/v1/types.go) and `LabelSelector` (apimachinery meta/v1). Semantics
kept here, next to the fields they belong to:

* `LabelSelector`: `matchLabels` and `matchExpressions` are ANDed; an empty selector matches
  everything (metav1.LabelSelectorAsSelector). Operators In, NotIn, Exists, DoesNotExist; `NotIn`
  also matches objects without the key.
* `NetworkPolicySpec.policyTypes`: when absent, `Ingress` always, plus `Egress` when the policy has
  egress rules.
* A rule's `from` / `to` empty or absent: every peer; `ports` empty or absent: every port and
  protocol. `NetworkPolicyPort.protocol` defaults to TCP; `port` is a number or a container port
  name; `endPort` (numbers only) makes it a range.

Objects arrive as the API serves them (`from_api`). A malformed object is refused with
`ModelError` (the watcher skips it and says so): the API server validated them already, so this
only guards against versions of the API we do not know.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROTOCOLS = ("TCP", "UDP", "SCTP")


class ModelError(ValueError):
    """An API object this module cannot read."""


class _Model(BaseModel):
    # unknown keys are ignored (we read subsets of big objects); frozen: compiled inputs never change
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


# -- label selectors ---------------------------------------------------------------------------------


class Requirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[Requirement, ...] = Field(default=(), alias="matchExpressions")

    @field_validator("match_labels", "match_expressions", mode="before")
    @classmethod
    def _null_is_empty(cls, v, info):
        if v is None:  # the API may serve `null` for an empty list or map
            return {} if info.field_name == "match_labels" else ()
        return v

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions)

    def __hash__(self) -> int:  # dicts are not hashable; a selector is used as a cache key
        return hash((tuple(sorted(self.match_labels.items())), self.match_expressions))


# -- NetworkPolicy -------------------------------------------------------------------------------------


class IPBlock(_Model):
    cidr: str
    except_: tuple[str, ...] = Field(default=(), alias="except")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        # the API accepts host bits set ("10.0.0.1/24" means 10.0.0.0/24); normalise
        return str(ipaddress.ip_network(v, strict=False))

    @field_validator("except_")
    @classmethod
    def _excepts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_network(c, strict=False)) for c in v)

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`cidr` minus every `except` entry (IPBlock: "except ... should not be included"), collapsed."""
        keep = [ipaddress.ip_network(self.cidr)]
        for exc in (ipaddress.ip_network(e) for e in self.except_):
            nxt = []
            for net in keep:
                if net.version != exc.version or not net.overlaps(exc):
                    nxt.append(net)
                elif exc.supernet_of(net):
                    continue
                else:
                    nxt.extend(net.address_exclude(exc))
            keep = nxt
        return sorted(ipaddress.collapse_addresses(keep), key=lambda n: (n.version, n))  # type: ignore[arg-type]


class Peer(_Model):
    pod_selector: LabelSelector | None = Field(default=None, alias="podSelector")
    namespace_selector: LabelSelector | None = Field(default=None, alias="namespaceSelector")
    ip_block: IPBlock | None = Field(default=None, alias="ipBlock")

    @model_validator(mode="after")
    def _one_kind(self) -> Peer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("a peer has either ipBlock or selectors, not both")
        if self.ip_block is None and not selectors:
            raise ValueError("an empty peer")
        return self


class Port(_Model):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    end_port: int | None = Field(default=None, alias="endPort")

    @field_validator("protocol", mode="before")
    @classmethod
    def _default_protocol(cls, v):
        return "TCP" if v is None else v

    @model_validator(mode="after")
    def _valid(self) -> Port:
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        if isinstance(self.port, str) and not self.port:
            raise ValueError("an empty port name")
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort needs a numeric port")
            if not self.port <= self.end_port <= 65535:
                raise ValueError(f"endPort {self.end_port} below port {self.port} or out of range")
        return self


class Rule(_Model):
    """One ingress rule (`from`) or egress rule (`to`); `peers` empty = every peer."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[Port, ...] = ()


class NetworkPolicy(_Model):
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] | None  # None: the policy does not isolate for ingress
    egress: tuple[Rule, ...] | None   # None: the policy does not isolate for egress

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_api(cls, obj: dict) -> NetworkPolicy:
        meta, spec = _meta(obj), obj.get("spec") or {}
        try:
            types = spec.get("policyTypes") or None
            ingress = [_rule(r, "from") for r in spec.get("ingress") or []]
            egress = [_rule(r, "to") for r in spec.get("egress") or []]
            if types is None:  # NetworkPolicySpec.policyTypes defaulting
                types = ["Ingress"] + (["Egress"] if egress else [])
            if not set(types) <= {"Ingress", "Egress"}:
                raise ModelError(f"unknown policyTypes {types}")
            return cls(namespace=meta["namespace"], name=meta["name"],
                       pod_selector=LabelSelector.model_validate(spec.get("podSelector") or {}),
                       ingress=tuple(ingress) if "Ingress" in types else None,
                       egress=tuple(egress) if "Egress" in types else None)
        except (ValidationError, ValueError, TypeError, AttributeError) as exc:
            raise ModelError(f"networkpolicy {meta['namespace']}/{meta['name']}: {_short(exc)}") from None


def _rule(raw: dict, peers_key: str) -> Rule:
    return Rule(peers=tuple(Peer.model_validate(p) for p in raw.get(peers_key) or []),
                ports=tuple(Port.model_validate(p) for p in raw.get("ports") or []))


# -- pods and namespaces -------------------------------------------------------------------------------


class NamedPort(_Model):
    name: str
    protocol: str
    number: int


class Pod(_Model):
    namespace: str
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    node_name: str = ""
    host_network: bool = False
    ips: tuple[str, ...] = ()       # status.podIPs
    named_ports: tuple[NamedPort, ...] = ()
    terminal: bool = False          # phase Succeeded or Failed: its IP may already belong to another pod

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_network(self) -> bool:
        """A pod NetworkPolicy applies to and can select as a peer: on the pod network, with an
        address, not finished. hostNetwork pods share their node's address; policies ignore them."""
        return bool(self.ips) and not self.host_network and not self.terminal

    def port_number(self, name: str, protocol: str) -> int | None:
        for p in self.named_ports:
            if p.name == name and p.protocol == protocol:
                return p.number
        return None

    @classmethod
    def from_api(cls, obj: dict) -> Pod:
        meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
        try:
            ips = [entry.get("ip") for entry in status.get("podIPs") or []] or [status.get("podIP")]
            ips = [str(ipaddress.ip_address(ip)) for ip in ips if ip]
            named = []
            for c in spec.get("containers") or []:
                for p in c.get("ports") or []:
                    if p.get("name"):
                        named.append(NamedPort(name=p["name"], protocol=p.get("protocol") or "TCP",
                                               number=int(p["containerPort"])))
            return cls(namespace=meta["namespace"], name=meta["name"], labels=meta["labels"],
                       node_name=spec.get("nodeName") or "", host_network=bool(spec.get("hostNetwork")),
                       ips=tuple(ips), named_ports=tuple(named),
                       terminal=status.get("phase") in ("Succeeded", "Failed"))
        except (ValidationError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ModelError(f"pod {meta['namespace']}/{meta['name']}: {_short(exc)}") from None


class Namespace(_Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_api(cls, obj: dict) -> Namespace:
        meta = _meta(obj, namespaced=False)
        return cls(name=meta["name"], labels=meta["labels"])


def _meta(obj: dict, namespaced: bool = True) -> dict:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ModelError("an object without metadata.name")
    if namespaced and not isinstance(meta.get("namespace"), str):
        raise ModelError(f"{meta['name']}: no metadata.namespace")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ModelError(f"{meta['name']}: labels must map strings to strings")
    return {"name": meta["name"], "namespace": meta.get("namespace", ""), "labels": labels}


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
    return str(exc)
