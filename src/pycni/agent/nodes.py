"""Where the agent learns the cluster's nodes: a JSON file, or the Kubernetes API.

Both sources give the same thing, a list of `Node(name, addresses, pod_cidrs)`:

* a nodes file (for clusters without Kubernetes, and for tests):
  `[{"name": "n1", "address": "172.30.0.2", "podCIDRs": ["10.244.1.0/24"]}, ...]`
  (`address` may also be a list, one address per family, for dual-stack; `podCIDR` is accepted too);
* the Kubernetes API, read from inside a pod with its service account (stdlib only: urllib + ssl, the
  cluster CA from /var/run/secrets/kubernetes.io/serviceaccount/ca.crt, the token re-read for every
  request because the kubelet rotates it): `GET /api/v1/nodes`, then per node `spec.podCIDRs` (or the
  older `spec.podCIDR`) and the `InternalIP` entries of `status.addresses`.

A node without pod CIDRs yet (the controller manager has not allocated one) or without an address is
kept in the list but produces no route; `routes.desired` skips it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class NodeSourceError(Exception):
    """The node list could not be read or is malformed (the agent keeps its last state and retries)."""


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()

    def address_for(self, version: int) -> str | None:
        """This node's address of one IP family (4 or 6): the next hop for its pod CIDR of that family."""
        for addr in self.addresses:
            if ipaddress.ip_address(addr).version == version:
                return addr
        return None


@dataclass
class NodeList:
    nodes: list[Node]
    version: str = ""  # the API's resourceVersion (or the file's content hash): "did anything change?"
    errors: list[str] = field(default_factory=list)  # entries skipped as malformed

    def get(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)


def _cidr(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise NodeSourceError(f"{where}: a pod CIDR must be a string, not {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise NodeSourceError(f"{where}: invalid pod CIDR {value!r}: {exc}") from None


def _address(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise NodeSourceError(f"{where}: an address must be a string, not {value!r}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise NodeSourceError(f"{where}: invalid address {value!r}: {exc}") from None


def _as_list(value: object) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def _check_families(name: str, cidrs: Iterable[str]) -> None:
    versions = [ipaddress.ip_network(c).version for c in cidrs]
    if len(versions) != len(set(versions)):
        raise NodeSourceError(f"node {name!r}: at most one pod CIDR per IP family, got {list(cidrs)}")


# -- the nodes file -----------------------------------------------------------------------------------


def parse_nodes_file(data: str | bytes) -> NodeList:
    """`[{"name", "address", "podCIDRs"}]` -> NodeList. Any malformed entry fails the whole file: a
    half-read file must not make the agent delete the routes of the nodes it could not read."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise NodeSourceError(f"nodes file is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
        doc = doc["nodes"]
    if not isinstance(doc, list):
        raise NodeSourceError("nodes file must be a JSON list of {name, address, podCIDRs} objects")
    nodes: list[Node] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc):
        where = f"nodes[{i}]"
        if not isinstance(entry, dict):
            raise NodeSourceError(f"{where}: must be an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise NodeSourceError(f"{where}: 'name' must be a non-empty string")
        if name in seen:
            raise NodeSourceError(f"{where}: duplicate node name {name!r}")
        seen.add(name)
        addrs = [_address(a, f"{where}.address") for a in _as_list(entry.get("address", entry.get("addresses")))]
        raw_cidrs = entry.get("podCIDRs", entry.get("podCIDR"))
        cidrs = [_cidr(c, f"{where}.podCIDRs") for c in _as_list(raw_cidrs)]
        _check_families(name, cidrs)
        nodes.append(Node(name=name, addresses=tuple(addrs), pod_cidrs=tuple(cidrs)))
    digest = hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()[:16]
    return NodeList(nodes=nodes, version=digest)


class FileSource:
    """Nodes from a JSON file, re-read every round (an atomic rename by whoever writes it is enough)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        return f"file {self.path}"

    def list(self) -> NodeList:
        try:
            with open(self.path, "rb") as f:
                return parse_nodes_file(f.read())
        except OSError as exc:
            raise NodeSourceError(f"cannot read nodes file {self.path}: {exc}") from None

    def wait(self, version: str, timeout: float, stop) -> None:
        stop.wait(timeout)


# -- the Kubernetes API -------------------------------------------------------------------------------


def parse_k8s_node(obj: dict) -> Node:
    """One v1.Node object -> Node (InternalIP addresses, spec.podCIDRs or spec.podCIDR)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise NodeSourceError("a node without metadata.name")
    raw = spec.get("podCIDRs") or _as_list(spec.get("podCIDR"))
    cidrs = [_cidr(c, f"node {name} spec.podCIDRs") for c in raw]
    _check_families(name, cidrs)
    addrs = [_address(a.get("address"), f"node {name} status.addresses")
             for a in status.get("addresses") or [] if isinstance(a, dict) and a.get("type") == "InternalIP"]
    return Node(name=name, addresses=tuple(addrs), pod_cidrs=tuple(cidrs))


def parse_k8s_node_list(doc: dict) -> NodeList:
    """A v1.NodeList -> NodeList. A malformed node is skipped (and reported), not fatal: one bad
    object in the API must not take every other node's routes away."""
    if not isinstance(doc, dict) or doc.get("kind") not in (None, "NodeList") or not isinstance(
            doc.get("items", []), list):
        raise NodeSourceError("the API did not return a NodeList")
    nodes, errors = [], []
    for item in doc.get("items") or []:
        try:
            nodes.append(parse_k8s_node(item))
        except NodeSourceError as exc:
            errors.append(str(exc))
    version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
    return NodeList(nodes=nodes, version=version, errors=errors)


class KubeClient:
    """A minimal in-cluster client: GET with the service account's bearer token over verified TLS."""

    def __init__(self, server: str | None = None, sa_dir: str = SA_DIR, timeout: float = 10.0,
                 environ: dict | None = None) -> None:
        env = os.environ if environ is None else environ
        if server is None:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise NodeSourceError("not in a cluster: KUBERNETES_SERVICE_HOST is not set (use --nodes-file)")
            if ":" in host:  # an IPv6 service address
                host = f"[{host}]"
            server = f"https://{host}:{port}"
        self.server = server.rstrip("/")
        self.sa_dir = sa_dir
        self.timeout = timeout
        ca = os.path.join(sa_dir, "ca.crt")
        try:
            self.ssl = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise NodeSourceError(f"cannot load the cluster CA {ca}: {exc}") from None
        # The API server is reached directly: no HTTP(S)_PROXY from the pod's environment applies.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=self.ssl))

    def _token(self) -> str:
        path = os.path.join(self.sa_dir, "token")
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as exc:
            raise NodeSourceError(f"cannot read the service account token {path}: {exc}") from None

    def open(self, path: str, query: dict | None = None, timeout: float | None = None):
        url = self.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token()}",
                                                   "Accept": "application/json",
                                                   "User-Agent": "pycni-agent"})
        try:
            return self._opener.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read(300).decode(errors="replace")
            raise NodeSourceError(f"GET {path}: HTTP {exc.code}: {body}") from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            raise NodeSourceError(f"GET {path}: {exc}") from None

    def get_json(self, path: str, query: dict | None = None) -> dict:
        with self.open(path, query) as resp:
            try:
                return json.load(resp)
            except ValueError as exc:
                raise NodeSourceError(f"GET {path}: invalid JSON: {exc}") from None


class KubeSource:
    """Nodes from the API: list, then wait with a watch (returns at the first change or the timeout)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def describe(self) -> str:
        return f"kubernetes API {self.client.server}"

    def list(self) -> NodeList:
        return parse_k8s_node_list(self.client.get_json("/api/v1/nodes"))

    def wait(self, version: str, timeout: float, stop) -> None:
        """Block until a node changes (one watch event) or `timeout` seconds pass. Errors just fall
        back to sleeping: the next round lists again anyway."""
        if not version or timeout < 1:
            stop.wait(timeout)
            return
        query = {"watch": "1", "resourceVersion": version, "timeoutSeconds": str(int(timeout)),
                 "allowWatchBookmarks": "false"}
        try:
            with self.client.open("/api/v1/nodes", query, timeout=timeout + 5) as resp:
                resp.readline()  # one event is enough: re-list and reconcile
        except (NodeSourceError, OSError, TimeoutError):
            stop.wait(min(timeout, 5))
