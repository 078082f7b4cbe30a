"""NetworkPolicy without root: the models (selectors, defaults, validation), the compiler (which
addresses, ports and pods end up where in the nft text) and the store/reflector (list + watch events,
with an in-process fake API client). What the text does to packets is tested in tests/netns/test_agent_netpol_netns.py."""

from __future__ import annotations

import io
import json
import random
import re
import threading

import pytest

from pycni.agent.netpol_compile import Snapshot, compile_node
from pycni.agent.netpol_model import IPBlock, LabelSelector, ModelError, Namespace, NetworkPolicy, Pod, Port
from pycni.agent.netpol_watch import Reflector, Store

# -- builders -----------------------------------------------------------------------------------------


def pod(ns, name, ips, node="n1", labels=None, named=None, host=False, phase="Running") -> dict:
    ips = [ips] if isinstance(ips, str) else ips
    return {"metadata": {"namespace": ns, "name": name, "labels": labels if labels is not None else {"pod": name}},
            "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "c", "ports": [
                {"name": n, "containerPort": port, "protocol": proto} for n, (port, proto) in (named or {}).items()]}]},
            "status": {"phase": phase, "podIPs": [{"ip": i} for i in ips]}}


def ns(name, **labels) -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def pol(namespace, name, spec) -> dict:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


def snap(pods=(), namespaces=(), policies=()) -> Snapshot:
    return Snapshot(pods=tuple(Pod.from_api(p) for p in pods), namespaces=tuple(Namespace.from_api(n) for n in namespaces),
                    policies=tuple(NetworkPolicy.from_api(p) for p in policies))


def sets(body: str) -> dict[str, list[str]]:
    """set/map name -> its elements, from the compiled text."""
    out = {}
    for m in re.finditer(r"\t(?:set|map) (\S+) \{ type [^;]+;(?: flags interval;)?(?: elements = \{ (.*?) \};)? \}", body):
        out[m.group(1)] = m.group(2).split(", ") if m.group(2) else []
    return out


def chain(body: str, name: str) -> list[str]:
    m = re.search(rf"\tchain {re.escape(name)} {{\n(.*?)\t}}", body, re.DOTALL)
    assert m, f"no chain {name} in\n{body}"
    return [line.strip() for line in m.group(1).splitlines()]


PODS = [pod("x", "a", "10.1.1.2", labels={"pod": "a", "tier": "web"}, named={"http": (8080, "TCP"), "dns": (53, "UDP")}),
        pod("x", "b", "10.1.1.3", labels={"pod": "b"}),
        pod("y", "c", "10.1.1.4", labels={"pod": "c", "tier": "db"}),
        pod("x", "d", "10.1.2.2", node="n2", labels={"pod": "d", "tier": "web"}, named={"http": (81, "TCP")}),
        pod("y", "e", "10.1.2.3", node="n2", labels={"pod": "e"}),
        pod("z", "f", "10.1.2.4", node="n2", labels={}),
        pod("x", "h", "172.18.0.2", labels={"pod": "h"}, host=True),                 # hostNetwork: never selected
        pod("x", "g", "10.1.1.9", labels={"pod": "g"}, phase="Succeeded")]           # finished: its IP is free
NSS = [ns("x", team="red"), ns("y", team="blue"), ns("z")]


def compiled(policies, node="n1", pods=PODS, namespaces=NSS):
    return compile_node(snap(pods, namespaces, policies), node)


# -- models ---------------------------------------------------------------------------------------------


def test_label_selector_operators():
    labels = {"a": "1", "b": "2"}
    sel = LabelSelector.model_validate
    assert sel({}).matches(labels) and sel({"matchLabels": None, "matchExpressions": None}).matches({})
    assert sel({"matchLabels": {"a": "1"}}).matches(labels) and not sel({"matchLabels": {"a": "2"}}).matches(labels)
    expr = lambda op, *v: sel({"matchExpressions": [{"key": "a", "operator": op, "values": list(v)}]})
    assert expr("In", "1", "3").matches(labels) and not expr("In", "3").matches(labels)
    assert expr("NotIn", "3").matches(labels) and not expr("NotIn", "1").matches(labels)
    assert expr("NotIn", "1").matches({"b": "2"})                     # NotIn matches a missing key
    assert expr("Exists").matches(labels) and not expr("Exists").matches({})
    assert expr("DoesNotExist").matches({}) and not expr("DoesNotExist").matches(labels)
    both = sel({"matchLabels": {"b": "2"}, "matchExpressions": [{"key": "a", "operator": "In", "values": ["9"]}]})
    assert not both.matches(labels)                                    # ANDed
    for bad in ({"matchExpressions": [{"key": "a", "operator": "In"}]},
                {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["1"]}]},
                {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}):
        with pytest.raises(ValueError):
            sel(bad)


def test_policy_types_default_and_rules():
    p = NetworkPolicy.from_api(pol("x", "p", {"podSelector": {}}))
    assert p.ingress == () and p.egress is None                       # default: Ingress only, no rule = deny
    p = NetworkPolicy.from_api(pol("x", "p", {"podSelector": {}, "egress": [{}]}))
    assert p.ingress == () and len(p.egress) == 1                     # egress rules imply Egress
    p = NetworkPolicy.from_api(pol("x", "p", {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}))
    assert p.ingress is None and p.egress == ()                       # explicit types win
    p = NetworkPolicy.from_api(pol("x", "p", {"podSelector": {}, "ingress": [{"from": None, "ports": None}]}))
    assert p.ingress[0].peers == () and p.ingress[0].ports == ()
    for spec in ({"podSelector": {}, "policyTypes": ["Sideways"]},
                 {"podSelector": {}, "ingress": [{"from": [{}]}]},
                 {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
                 {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]},
                 {"podSelector": {}, "ingress": [{"ports": [{"port": "web", "endPort": 90}]}]},
                 {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
                 {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
                 {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}):
        with pytest.raises(ModelError):
            NetworkPolicy.from_api(pol("x", "bad", spec))
    assert Port.model_validate({"protocol": None, "port": 80}).protocol == "TCP"


def test_ipblock_except():
    nets = [str(n) for n in IPBlock.model_validate({"cidr": "10.0.0.7/24", "except": ["10.0.0.0/25", "10.0.0.200/32"]})
            .networks()]
    assert nets == ["10.0.0.128/26", "10.0.0.192/29", "10.0.0.201/32", "10.0.0.202/31", "10.0.0.204/30",
                    "10.0.0.208/28", "10.0.0.224/27"]
    assert IPBlock.model_validate({"cidr": "10.0.0.0/24", "except": ["10.0.0.0/16"]}).networks() == []
    assert [str(n) for n in IPBlock.model_validate({"cidr": "fd00::/64", "except": ["10.0.0.0/8"]}).networks()] == \
        ["fd00::/64"]


def test_pod_fields():
    p = Pod.from_api(pod("x", "a", ["10.1.1.2", "fd00::2"], named={"http": (8080, "TCP")}))
    assert p.ips == ("10.1.1.2", "fd00::2") and p.has_network and p.port_number("http", "TCP") == 8080
    assert p.port_number("http", "UDP") is None
    legacy = pod("x", "a", [])
    legacy["status"]["podIP"] = "10.1.1.5"
    assert Pod.from_api(legacy).ips == ("10.1.1.5",)
    assert not Pod.from_api(pod("x", "a", [])).has_network           # no address yet
    assert not Pod.from_api(pod("x", "a", "10.1.1.2", host=True)).has_network
    assert not Pod.from_api(pod("x", "a", "10.1.1.2", phase="Failed")).has_network
    with pytest.raises(ModelError):
        Pod.from_api({"metadata": {"name": "no-namespace"}})
    with pytest.raises(ModelError):
        Pod.from_api(pod("x", "a", "not-an-ip"))
    with pytest.raises(ModelError):
        Namespace.from_api({"metadata": {"name": "x", "labels": {"a": 1}}})


# -- the compiler ---------------------------------------------------------------------------------------


def test_no_policy_no_isolation():
    c = compiled([])
    assert c.rules == 0 and c.isolated_pods == 0 and c.policies == {}
    assert all(v == [] for v in sets(c.body).values())
    assert chain(c.body, "egress")[1:] == ["ct state established,related accept",
                                          ("icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
                                          "nd-neighbor-advert } accept"), "ip saddr vmap @eg4", "ip6 saddr vmap @eg6"]
    assert chain(c.body, "ingress")[0] == "type filter hook forward priority filter + 1; policy accept;"


def test_default_deny_ingress_isolates_local_pods_of_the_namespace_only():
    c = compiled([pol("x", "deny", {"podSelector": {}})])
    s = sets(c.body)
    # x/a and x/b live on n1; x/d is on n2; hostNetwork x/h and finished x/g are never isolated
    assert s["in4"] == ["10.1.1.2 : goto in-s0", "10.1.1.3 : goto in-s0"] and s["eg4"] == []
    assert chain(c.body, "p0-in") == [] and chain(c.body, "in-s0") == ["jump p0-in", 'counter drop comment "x/deny"']
    assert c.isolated_pods == 2
    c2 = compiled([pol("x", "deny", {"podSelector": {}})], node="n2")
    assert sets(c2.body)["in4"] == ["10.1.2.2 : goto in-s0"]
    # a node without selected pods compiles no policy chain at all
    assert compiled([pol("z", "deny", {"podSelector": {}})]).body == compiled([]).body


def test_deny_all_egress_and_ingress():
    c = compiled([pol("y", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})])
    s = sets(c.body)
    assert s["in4"] == ["10.1.1.4 : goto in-s0"] and s["eg4"] == ["10.1.1.4 : goto eg-s0"]
    assert chain(c.body, "eg-s0")[-1].startswith("counter drop")


def test_peer_selectors():
    spec = {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]},  # x only
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]},                       # all of y
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "web"}}}]},    # web anywhere
        {"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x", "y"]}]}}]},  # z
        {"from": [{"podSelector": {"matchLabels": {"pod": "nobody"}}}]},                           # nothing
    ]}
    c = compiled([pol("x", "p", spec)])
    s = sets(c.body)
    assert s["p0-in0-v4"] == ["10.1.1.2", "10.1.2.2"]               # a, d (x, tier exists); not c (y)
    assert s["p0-in1-v4"] == ["10.1.1.4", "10.1.2.3"]               # c, e
    assert "p0-in2-v4" not in s                                     # a, d again: the set of rule 0 is reused
    assert s["p0-in3-v4"] == ["10.1.2.4"]                           # f
    assert "p0-in4-v4" not in s                                     # selects nobody: no line at all
    assert chain(c.body, "p0-in") == [f'ip saddr @p0-in{r}-v4 accept comment "x/p"' for r in (0, 1, 3)]  # rule 2 = rule 0
    assert s["in4"] == ["10.1.1.2 : goto in-s0"] and c.policies == {"x/p": 3}


def test_ipblock_and_pods_in_one_rule_are_a_union():
    spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.1.0/24"]}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    s = sets(compiled([pol("x", "p", spec)]).body)
    # except removes 10.1.1.0/24, but pod b (10.1.1.3) is a peer through the selector
    assert s["p0-eg0-v4"] == ["10.1.0.0/24", "10.1.1.3", "10.1.2.0/23", "10.1.4.0/22", "10.1.8.0/21", "10.1.16.0/20",
                              "10.1.32.0/19", "10.1.64.0/18", "10.1.128.0/17"]


def test_ports_protocols_and_end_port():
    spec = {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 9000, "endPort": 9010},
        {"protocol": "UDP"}, {"port": 443, "endPort": 443}]}]}
    c = compiled([pol("x", "p", spec)])
    assert chain(c.body, "p0-in") == [f'{m} accept comment "x/p"' for m in (
        "meta l4proto tcp th dport 80", "meta l4proto udp th dport 53", "meta l4proto sctp th dport 9000-9010",
        "meta l4proto udp", "meta l4proto tcp th dport 443")]
    # with peers: the same port lines per peer family
    spec["ingress"][0]["from"] = [{"ipBlock": {"cidr": "192.168.0.0/16"}}, {"ipBlock": {"cidr": "fd00::/8"}}]
    lines = chain(compiled([pol("x", "p", spec)]).body, "p0-in")
    assert len(lines) == 10 and lines[0].startswith("ip saddr @p0-in0-v4 meta l4proto tcp th dport 80")
    assert lines[5].startswith("ip6 saddr @p0-in0-v6 meta l4proto tcp th dport 80")
    # an empty rule allows everything; no rule at all allows nothing
    assert chain(compiled([pol("x", "p", {"podSelector": {}, "ingress": [{}]})]).body, "p0-in") == \
        ['accept comment "x/p"']


def test_named_ports_resolve_per_destination_pod():
    ingress = {"podSelector": {"matchLabels": {"tier": "web"}}, "ingress": [{"ports": [{"port": "http"},
                                                                                     {"protocol": "UDP", "port": "dns"},
                                                                                     {"protocol": "UDP", "port": "http"}]}]}
    c = compiled([pol("x", "web", ingress)])
    s = sets(c.body)
    assert s["p0-in0-np0-v4"] == ["10.1.1.2 . tcp . 8080"]           # a's http; d (n2) is not a target here
    assert s["p0-in0-np1-v4"] == ["10.1.1.2 . udp . 53"]
    assert "p0-in0-np2-v4" not in s                                   # no UDP port named http anywhere
    assert chain(c.body, "p0-in") == [
        'ip daddr . meta l4proto . th dport @p0-in0-np0-v4 accept comment "x/web"',
        'ip daddr . meta l4proto . th dport @p0-in0-np1-v4 accept comment "x/web"']
    assert sets(compiled([pol("x", "web", ingress)], node="n2").body)["p0-in0-np0-v4"] == ["10.1.2.2 . tcp . 81"]
    # egress: resolved on the peers; with no `to`, on every pod of the cluster
    egress = {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "d"}}}], "ports": [{"port": "http"}]},
        {"ports": [{"port": "http"}]}]}
    s = sets(compiled([pol("x", "out", egress)]).body)
    assert s["p0-eg0-v4"] == ["10.1.2.2"] and s["p0-eg0-np0-v4"] == ["10.1.2.2 . tcp . 81"]
    assert s["p0-eg1-np0-v4"] == ["10.1.1.2 . tcp . 8080", "10.1.2.2 . tcp . 81"]
    # an ipBlock peer has no named ports: the rule allows nothing
    egress["egress"] = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": "http"}]}]
    c = compiled([pol("x", "out", egress)])
    assert chain(c.body, "p0-eg") == [] and sets(c.body)["eg4"] == ["10.1.1.3 : goto eg-s0"]


def test_stacked_policies_share_dispatch_chains():
    policies = [pol("x", "web", {"podSelector": {"matchLabels": {"tier": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}),
                pol("x", "all", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
                pol("x", "out", {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"]})]
    c = compiled(policies)
    s = sets(c.body)
    # sorted by key: x/all = p0, x/out = p1, x/web = p2; a has {all, web}, b has {all} in, {out} eg
    assert s["in4"] == ["10.1.1.2 : goto in-s1", "10.1.1.3 : goto in-s0"]
    assert chain(c.body, "in-s0") == ["jump p0-in", 'counter drop comment "x/all"']
    assert chain(c.body, "in-s1") == ["jump p0-in", "jump p2-in", 'counter drop comment "x/all, x/web"']
    assert s["eg4"] == ["10.1.1.3 : goto eg-s0"] and chain(c.body, "p1-eg") == []


def test_dual_stack():
    pods = [pod("x", "a", ["10.1.1.2", "fd00:1::2"], named={"http": (80, "TCP")}),
            pod("x", "b", ["10.1.2.2", "fd00:2::2"], node="n2")]
    spec = {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": "http"}]}]}
    c = compiled([pol("x", "p", spec)], pods=pods)
    s = sets(c.body)
    assert s["in4"] == ["10.1.1.2 : goto in-s0"] and s["in6"] == ["fd00:1::2 : goto in-s0"]
    assert s["p0-in0-v6"] == ["fd00:2::2"] and s["p0-in0-np0-v6"] == ["fd00:1::2 . tcp . 80"]
    assert chain(c.body, "p0-in") == [
        'ip saddr @p0-in0-v4 ip daddr . meta l4proto . th dport @p0-in0-np0-v4 accept comment "x/p"',
        'ip6 saddr @p0-in0-v6 ip6 daddr . meta l4proto . th dport @p0-in0-np0-v6 accept comment "x/p"']


def test_deterministic():
    policies = [pol("x", f"p{i}", {"podSelector": {"matchLabels": {"tier": "web"}}, "ingress": [
        {"from": [{"namespaceSelector": {}}], "ports": [{"port": 80 + i}]}]}) for i in range(5)]
    policies.append(pol("y", "deny", {"podSelector": {}, "policyTypes": ["Egress"]}))
    first = compiled(policies).body
    rnd = random.Random(7)
    for _ in range(5):
        pods, nss, pols = PODS[:], NSS[:], policies[:]
        for lst in (pods, nss, pols):
            rnd.shuffle(lst)
        assert compiled(pols, pods=pods, namespaces=nss).body == first


# -- store and reflector --------------------------------------------------------------------------------


def test_store_events():
    st = Store()
    assert not st.synced
    st.replace("pods", [pod("x", "a", "10.1.1.2")])
    st.replace("namespaces", [ns("x")])
    st.replace("networkpolicies", [pol("x", "bad", {"podSelector": {}, "policyTypes": ["Nope"]})])
    assert st.synced and "networkpolicies x/bad" in st.bad
    snapshot, since = st.snapshot()
    assert since is not None and not st.changed.is_set() and len(snapshot.pods) == 1 and snapshot.policies == ()
    status_only = pod("x", "a", "10.1.1.2")
    status_only["status"]["conditions"] = [{"type": "Ready"}]
    st.apply("pods", "MODIFIED", status_only)
    assert not st.changed.is_set()                                    # nothing the compiler reads changed
    st.apply("pods", "MODIFIED", pod("x", "a", "10.1.1.2", labels={"new": "label"}))
    assert st.changed.is_set()
    st.apply("networkpolicies", "DELETED", pol("x", "bad", {}))
    assert st.bad == {}
    st.apply("pods", "DELETED", pod("x", "a", "10.1.1.2"))
    assert st.snapshot()[0].pods == ()


class FakeClient:
    """KubeClient's two calls, served from memory: LIST returns `lists`, WATCH streams `watches`."""

    def __init__(self, lists: dict, watches: dict) -> None:
        self.lists, self.watches, self.calls = lists, watches, []

    def get_json(self, path, query=None):
        self.calls.append(("list", path))
        return self.lists[path].pop(0)

    def open(self, path, query=None, timeout=None):
        self.calls.append(("watch", path, query["resourceVersion"]))
        events = self.watches[path].pop(0) if self.watches[path] else []
        if not self.watches[path] and not events:
            threading.Event().wait(0.05)
        return io.BytesIO(b"".join(json.dumps(e).encode() + b"\n" for e in events))


def test_reflector_lists_watches_resumes_and_relists():
    path = "/apis/networking.k8s.io/v1/networkpolicies"
    p1 = pol("x", "p1", {"podSelector": {}})
    p1["metadata"]["resourceVersion"] = "11"
    p2 = pol("x", "p2", {"podSelector": {}})
    p2["metadata"]["resourceVersion"] = "12"
    client = FakeClient(
        {path: [{"metadata": {"resourceVersion": "10"}, "items": []},
                {"metadata": {"resourceVersion": "20"}, "items": [p2]}]},
        {path: [[{"type": "ADDED", "object": p1}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}],
                [{"type": "ADDED", "object": p2}, {"type": "ERROR", "object": {"code": 410, "message": "too old"}}],
                []]})
    st, stop = Store(), threading.Event()
    r = Reflector(client, "networkpolicies", st, stop)
    r.start()
    deadline = threading.Event()
    for _ in range(100):
        if ("watch", path, "20") in client.calls:
            break
        deadline.wait(0.02)
    stop.set()
    r.join(timeout=5)
    assert client.calls[:5] == [("list", path), ("watch", path, "10"), ("watch", path, "15"), ("list", path),
                                ("watch", path, "20")]
    assert [p.name for p in st.snapshot()[0].policies] == ["p2"]     # the relist replaced the collection


def test_collapse_equals_ipaddress_collapse():
    import ipaddress

    from pycni.agent.netpol_compile import _collapse
    rnd = random.Random(11)
    for _ in range(200):
        nets = []
        for _ in range(rnd.randint(0, 40)):
            if rnd.random() < 0.7:
                nets.append(ipaddress.ip_network(f"10.0.{rnd.randint(0, 3)}.{rnd.randint(0, 255)}/{rnd.randint(24, 32)}",
                                                 strict=False))
            else:
                nets.append(ipaddress.ip_network(f"fd00::{rnd.randint(0, 300):x}/{rnd.randint(118, 128)}", strict=False))
        got = _collapse(nets)
        for v in (4, 6):
            assert got[v] == list(ipaddress.collapse_addresses([n for n in nets if n.version == v]))
