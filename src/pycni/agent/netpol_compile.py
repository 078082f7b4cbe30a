"""NetworkPolicy -> one nftables table for one node: a pure, deterministic function of
(pods, namespaces, policies, node name). Same input, same text, byte for byte.

What a node enforces. Every node filters only its own pods (spec.nodeName == this node): ingress of
a pod is checked on the pod's node, egress on the pod's node. Traffic between two pods on different
nodes is therefore checked twice, egress at the source's node and ingress at the destination's, and
traffic between two pods of one node is checked once for both. Peers may be anywhere: peer sets
hold the addresses of every matching pod in the cluster.

Where. The `forward` hook of the node (family inet: IPv4 and IPv6):
* cross-node and pod-to-outside traffic is routed by the node, so it is forwarded;
* same-node traffic is *bridged* on pycni's bridge; it reaches the IP forward hook only through
  br_netfilter with `net.bridge.bridge-nf-call-ip{,6}tables = 1` - which kube-proxy needs as well
  (Services whose backend shares the client's bridge) and which the agent and this controller set;
* traffic from the node itself (kubelet probes, hostNetwork pods of this node) goes through the
  output hook and is never filtered, as the API documents ("traffic to and from the node where a
  Pod is running is always allowed"); packets from other nodes' hosts are filtered like any peer.
Services are already translated when the forward hook sees a packet (kube-proxy DNATs in
prerouting), so policies apply to pod addresses, as they must.

Shape of the table (two base chains on the same hook: `accept` ends only the chain it is in, so a
packet needs the accept of both, egress of its source and ingress of its destination):

    chain egress  { forward, priority filter;     ct established/related accept; ND accept;
                    ip saddr vmap @eg4 ; ip6 saddr vmap @eg6 }
    chain ingress { forward, priority filter + 1; ct established/related accept; ND accept;
                    ip daddr vmap @in4 ; ip6 daddr vmap @in6 }
    map eg4/in4/eg6/in6 : local isolated pod address -> goto <direction>-s<k>
    chain in-s<k> : jump p<i>-in for every policy of that pod (a "policy set"); counter drop
    chain p<i>-in : one `... accept` line per (peer family x port) of each rule of policy i
    set   p<i>-in<r>-v4 / -v6 : the peers of rule r (pod addresses + ipBlock minus except, collapsed)
    set   p<i>-in<r>-np4 / -np6 : named ports as (address . protocol . port), resolved per pod

Replies and established connections: `ct state established,related accept` first, so a reply is
never filtered, and a connection that was allowed when it started keeps going after a policy change
(the spec leaves existing connections to the implementation). A denied packet is dropped before
conntrack confirms it, so a denied attempt leaves no entry that a later packet could ride on.
IPv6 neighbour discovery (NS/NA/RS/RA) is always accepted: an isolated pod must still resolve its
neighbours. Pods that no policy selects are not in the maps: their traffic is never matched.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .netpol_model import LabelSelector, Namespace, NetworkPolicy, Peer, Pod, Rule

TABLE = "pycni-netpol"
FAMILY = "inet"
_IP = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_ND = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Snapshot:
    """What the API says, as the compiler reads it."""

    pods: tuple[Pod, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()


@dataclass
class Compiled:
    body: str                      # the lines inside `table inet pycni-netpol { ... }`
    rules: int = 0                 # rule lines in policy and dispatch chains
    elements: int = 0              # elements of every set and map
    isolated_pods: int = 0         # local pods some policy selects
    policies: dict[str, int] = field(default_factory=dict)  # policy key -> rule lines compiled for it


# -- selection -----------------------------------------------------------------------------------------


class _Index:
    """Pods by namespace and namespace labels, for selector evaluation (memoised: policies of a
    cluster repeat the same selectors, and each is evaluated once per compilation)."""

    def __init__(self, snap: Snapshot) -> None:
        self.pods = sorted((p for p in snap.pods if p.has_network), key=lambda p: p.key)
        self.by_ns: dict[str, list[Pod]] = {}
        for p in self.pods:
            self.by_ns.setdefault(p.namespace, []).append(p)
        self.ns_labels = {n.name: n.labels for n in snap.namespaces}
        self._memo: dict[tuple, list[Pod]] = {}

    def peer_pods(self, peer: Peer, policy_ns: str) -> list[Pod]:
        """NetworkPolicyPeer: podSelector alone = pods of the policy's namespace; namespaceSelector alone =
        every pod of the matching namespaces; both = the matching pods of the matching namespaces."""
        if peer.ip_block is not None:
            return []
        key = (peer.pod_selector, peer.namespace_selector, policy_ns if peer.namespace_selector is None else None)
        if key not in self._memo:
            pod_sel = peer.pod_selector or LabelSelector()
            if peer.namespace_selector is None:
                namespaces = [policy_ns]
            else:
                namespaces = [ns for ns in sorted(self.by_ns)
                              if peer.namespace_selector.matches(self.ns_labels.get(ns, {}))]
            self._memo[key] = [p for ns in namespaces for p in self.by_ns.get(ns, []) if pod_sel.matches(p.labels)]
        return self._memo[key]

    def rule_peers(self, peers: tuple[Peer, ...], policy_ns: str) -> tuple[list[Pod], dict[int, list[Net]]]:
        """The pods a rule's peers select, and every address they allow (pods + ipBlocks minus except),
        collapsed per family."""
        key = ("rule", peers, policy_ns)
        if key not in self._memo:
            pods: list[Pod] = []
            nets: list[Net] = []
            for peer in peers:
                if peer.ip_block is not None:
                    nets += peer.ip_block.networks()
                else:
                    selected = self.peer_pods(peer, policy_ns)
                    pods += selected
                    nets += _nets(ip for p in selected for ip in p.ips)
            self._memo[key] = (pods, _collapse(nets))  # type: ignore[assignment]
        return self._memo[key]  # type: ignore[return-value]

    def named_port(self, holders: list[Pod], name: str, protocol: str, fam: int, memo: tuple | None) -> list[str]:
        """`address . protocol . number` for each address of family `fam` of the `holders` that have a
        container port `name` with that protocol (NetworkPolicyPort: named ports resolve per pod)."""
        key = (memo, name, protocol, fam)
        if memo is None or key not in self._memo:
            elems = sorted({(int(_ip(ip)), ip, n) for p in holders if (n := p.port_number(name, protocol)) is not None
                            for ip in p.ips if _ip(ip).version == fam})
            out = [f"{ip} . {protocol.lower()} . {n}" for _, ip, n in elems]
            if memo is None:
                return out
            self._memo[key] = out  # type: ignore[assignment]
        return self._memo[key]  # type: ignore[return-value]


@functools.lru_cache(maxsize=1 << 16)
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address)


@functools.lru_cache(maxsize=1 << 16)
def _host(address: str) -> Net:
    return ipaddress.ip_network(address)


def _nets(addresses: Iterable[str]) -> list[Net]:
    return [_host(a) for a in addresses]


def _collapse(nets: Iterable[Net]) -> dict[int, list[Net]]:
    """Per family, the fewest networks covering exactly the union of `nets`, in address order (what
    ipaddress.collapse_addresses does, on integer intervals: thousands of pod addresses per rule)."""
    spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for n in nets:
        start = int(n.network_address)
        spans[n.version].append((start, start + (1 << (n.max_prefixlen - n.prefixlen)) - 1))
    out: dict[int, list[Net]] = {4: [], 6: []}
    for v, items in spans.items():
        merged: list[list[int]] = []
        for start, end in sorted(items):
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        cls = ipaddress.IPv4Address if v == 4 else ipaddress.IPv6Address
        for start, end in merged:
            if start == end:
                out[v].append(_host(str(cls(start))))
            else:
                out[v].extend(ipaddress.summarize_address_range(cls(start), cls(end)))
    return out


def _element(net: Net) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# -- rendering -----------------------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.sets: list[str] = []
        self.chains: list[str] = []
        self.rules = 0
        self.elements = 0
        self._by_content: dict[tuple, str] = {}

    def set_for(self, name: str, typ: str, elements: Sequence[str], interval: bool = False) -> str:
        """The name of a set with these elements: an identical set made earlier (policies repeat the same
        selectors and named ports), or a new one called `name`."""
        key = (typ, interval, tuple(elements))
        if key not in self._by_content:
            flags = " flags interval;" if interval else ""
            elems = f" elements = {{ {', '.join(elements)} }};" if elements else ""
            self.sets.append(f"\tset {name} {{ type {typ};{flags}{elems} }}")
            self.elements += len(elements)
            self._by_content[key] = name
        return self._by_content[key]

    def add_map(self, name: str, typ: str, elements: Sequence[str]) -> None:
        elems = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        self.sets.append(f"\tmap {name} {{ type {typ} : verdict;{elems} }}")
        self.elements += len(elements)

    def add_chain(self, name: str, lines: Sequence[str], base: str = "", counted: bool = True) -> None:
        body = [f"\t\t{base}"] if base else []
        body += [f"\t\t{line}" for line in lines]
        self.chains.append("\n".join([f"\tchain {name} {{", *body, "\t}"]))
        if counted:
            self.rules += len(lines)

    def text(self) -> str:
        return "\n".join(self.sets + self.chains) + "\n"


def _port_matches(rule: Rule, fam: int, named_set: Callable[[int, int], str]) -> list[str]:
    """One match per NetworkPolicyPort of the rule, for family `fam`; [""] = any port, any protocol.
    `named_set(port index, family)`: the set resolving a named port ("" when no pod has it)."""
    if not rule.ports:
        return [""]
    out = []
    for j, port in enumerate(rule.ports):
        proto = port.protocol.lower()
        if port.port is None:
            out.append(f"meta l4proto {proto}")
        elif isinstance(port.port, int):
            rng = f"{port.port}-{port.end_port}" if port.end_port not in (None, port.port) else str(port.port)
            out.append(f"meta l4proto {proto} th dport {rng}")
        elif name := named_set(j, fam):
            out.append(f"{_IP[fam]} daddr . meta l4proto . th dport @{name}")
    return out


def _compile_direction(w: _Writer, idx: _Index, i: int, pol: NetworkPolicy, ingress: bool,
                       targets: list[Pod]) -> int:
    """Chain p<i>-in or p<i>-eg with the allow lines of every rule; returns its number of lines."""
    d = "in" if ingress else "eg"
    rules = pol.ingress if ingress else pol.egress
    peer_dir = "saddr" if ingress else "daddr"
    lines: list[str] = []
    comment = f'comment "{pol.key}"'[:130]
    for r, rule in enumerate(rules or ()):
        # peers: None = every peer (`from`/`to` empty); else the collapsed address set per family
        peer_pods: list[Pod] = []
        peers: dict[int, list[Net]] | None = None
        if rule.peers:
            peer_pods, peers = idx.rule_peers(rule.peers, pol.namespace)
        # named ports: resolved on the destination pod - the target for ingress, the peer for egress
        # (every pod of the cluster when `to` is empty; an ipBlock peer never has named ports)
        named: dict[tuple[int, int], list[str]] = {}  # (port index, family) -> "address . proto . port"
        for j, port in enumerate(rule.ports):
            if not isinstance(port.port, str):
                continue
            if ingress:
                holders, memo = targets, None
            else:  # egress peers repeat across policies (often: every pod), so their resolution is memoised
                holders, memo = (peer_pods, (pol.namespace, rule.peers)) if rule.peers else (idx.pods, ("*",))
            for fam in (4, 6):
                elems = idx.named_port(holders, port.port, port.protocol, fam, memo)
                if elems:
                    named[(j, fam)] = elems

        def named_set(j: int, fam: int, r: int = r, named: dict = named) -> str:  # made when a line uses it
            if (j, fam) not in named:
                return ""
            return w.set_for(f"p{i}-{d}{r}-np{j}-v{fam}", f"{_ADDR_TYPE[fam]} . inet_proto . inet_service",
                             named[(j, fam)])

        for fam in (4, 6):
            if peers is None:
                peer_match = ""
            elif not peers[fam]:
                continue  # no peer of this family: this rule allows nothing here
            else:
                name = w.set_for(f"p{i}-{d}{r}-v{fam}", _ADDR_TYPE[fam], [_element(n) for n in peers[fam]],
                                 interval=True)
                peer_match = f"{_IP[fam]} {peer_dir} @{name}"
            for pm in _port_matches(rule, fam, named_set):
                line = " ".join(x for x in (peer_match, pm, "accept", comment) if x)
                if line not in lines:  # family-independent lines (no peers, numeric ports) once
                    lines.append(line)
    w.add_chain(f"p{i}-{d}", lines)
    return len(lines)


def compile_node(snap: Snapshot, node: str) -> Compiled:
    """The body of table inet pycni-netpol for node `node`."""
    idx = _Index(snap)
    policies = sorted(snap.policies, key=lambda p: p.key)
    local = [p for p in idx.pods if p.node_name == node]
    w = _Writer()
    stats: dict[str, int] = {}

    # which policies isolate each local pod, per direction
    sel: dict[str, list[tuple[Pod, tuple[int, ...]]]] = {"in": [], "eg": []}
    by_ns: dict[str, list[int]] = {}
    for i, pol in enumerate(policies):
        by_ns.setdefault(pol.namespace, []).append(i)
    for pod in local:
        matching = [i for i in by_ns.get(pod.namespace, ()) if policies[i].pod_selector.matches(pod.labels)]
        for d in ("in", "eg"):
            mine = tuple(i for i in matching if (policies[i].ingress if d == "in" else policies[i].egress) is not None)
            if mine:
                sel[d].append((pod, mine))

    # policy chains, only for policies that isolate a pod of this node in that direction
    for d in ("in", "eg"):
        used = sorted({i for _pod, mine in sel[d] for i in mine})
        for i in used:
            targets = [pod for pod, mine in sel[d] if i in mine]
            n = _compile_direction(w, idx, i, policies[i], d == "in", targets)
            stats[policies[i].key] = stats.get(policies[i].key, 0) + n

    # one dispatch chain per distinct policy set, and the address -> chain maps
    for d in ("in", "eg"):
        sets = sorted({mine for _pod, mine in sel[d]})
        chain_of = {mine: f"{d}-s{k}" for k, mine in enumerate(sets)}
        for mine, chain in chain_of.items():
            keys = ", ".join(policies[i].key for i in mine)
            w.add_chain(chain, [*(f"jump p{i}-{d}" for i in mine), f'counter drop comment "{keys}"'[:140]])
        for fam in (4, 6):
            elems = sorted((int(_ip(ip)), ip, chain_of[mine]) for pod, mine in sel[d]
                           for ip in pod.ips if _ip(ip).version == fam)
            w.add_map(f"{d}{fam}", _ADDR_TYPE[fam], [f"{ip} : goto {chain}" for _, ip, chain in elems])

    hooks = []
    for d, chain, prio, addr in (("eg", "egress", "filter", "saddr"), ("in", "ingress", "filter + 1", "daddr")):
        hooks.append((chain, f"type filter hook forward priority {prio}; policy accept;",
                      ["ct state established,related accept", _ND,
                       f"ip {addr} vmap @{d}4", f"ip6 {addr} vmap @{d}6"]))
    for chain, base, lines in hooks:
        w.add_chain(chain, lines, base=base, counted=False)
    isolated = len({p.key for d in sel for p, _ in sel[d]})
    return Compiled(body=w.text(), rules=w.rules, elements=w.elements, isolated_pods=isolated, policies=stats)
