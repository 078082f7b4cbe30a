"""The channel's messages (pycni.bridge.links *_message, framed by netlink.frame) are the requests
pyroute2's own IPRoute sends for the same operation: each case is compiled by pyroute2's IPBatch
(IPRoute's request pipeline, without a socket) and both are decoded and compared - message type, request
flags, header fields and every attribute. Root-free: nothing is sent."""

from __future__ import annotations

import pytest

from pycni.bridge import links, netlink

IPBatch = pytest.importorskip("pyroute2.iproute.linux").IPBatch


def _canonical(value):
    """Attributes compared as a set (the kernel does not care about their order)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("header", "__align", "value"):
                continue
            out[key] = _canonical(item)
        return out
    if isinstance(value, (list, tuple)):
        if all(isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str) for x in value):
            return sorted((name, repr(_canonical(item))) for name, item in value)
        return [_canonical(x) for x in value]
    return value


def _decoded(cls, data: bytes) -> tuple[int, int, object]:
    msg = cls(data)
    msg.decode()
    return msg["header"]["type"], msg["header"]["flags"], _canonical(msg.dump())


def _pyroute2(call) -> bytes:
    batch = IPBatch()
    call(batch)
    return bytes(batch.batch)


def _ours(msg, mtype: int, flags: int) -> bytes:
    return netlink.frame(msg, mtype, flags, 1)


def _same(cls, ours: bytes, theirs: bytes) -> None:
    assert _decoded(cls, ours) == _decoded(cls, theirs)


@pytest.mark.parametrize("mtu, mac", [(0, ""), (1400, ""), (9000, "02:00:00:00:00:01")])
def test_veth_pair(mtu, mac):
    ifinfmsg, _, _ = netlink.messages()
    peer = {"ifname": "eth0", "net_ns_fd": 7}
    kwargs = {"ifname": "veth01234567", "kind": "veth", "master": 5, "peer": peer, "flags": 1, "change": 1}
    if mtu:
        kwargs["mtu"] = peer["mtu"] = mtu
    if mac:
        peer["address"] = mac
    theirs = _pyroute2(lambda b: b.link("add", **kwargs))
    ours = _ours(links.veth_message("veth01234567", "eth0", 7, 5, mtu, mac), netlink.RTM_NEWLINK, netlink.CREATE)
    _same(ifinfmsg, ours, theirs)


@pytest.mark.parametrize("ours, call", [
    (lambda: links.link_message(4, flags=1, change=1), lambda b: b.link("set", index=4, state="up")),
    (lambda: links.link_message(4, attrs=[("IFLA_IFALIAS", "pycni:ab:cd")]),
     lambda b: b.link("set", index=4, ifalias="pycni:ab:cd")),
    (lambda: links.link_message(4, attrs=[("IFLA_ADDRESS", "02:aa:bb:cc:dd:ee")]),
     lambda b: b.link("set", index=4, address="02:aa:bb:cc:dd:ee")),
])
def test_link_set(ours, call):
    ifinfmsg, _, _ = netlink.messages()
    _same(ifinfmsg, _ours(ours(), netlink.RTM_NEWLINK, 0), _pyroute2(call))


def test_link_delete_by_name():
    ifinfmsg, _, _ = netlink.messages()
    ours = _ours(links.link_message(attrs=[("IFLA_IFNAME", "veth01234567")]), netlink.RTM_DELLINK, 0)
    _same(ifinfmsg, ours, _pyroute2(lambda b: b.link("del", ifname="veth01234567")))


@pytest.mark.parametrize("iface, nodad, kwargs", [
    ("10.1.0.2/24", True, {"address": "10.1.0.2", "prefixlen": 24, "broadcast": "10.1.0.255"}),
    ("10.1.0.2/31", True, {"address": "10.1.0.2", "prefixlen": 31}),
    ("10.1.0.2/32", False, {"address": "10.1.0.2", "prefixlen": 32}),
    ("fd00::2/64", True, {"address": "fd00::2", "prefixlen": 64, "flags": 0x02}),  # IFA_F_NODAD
    ("fd00::2/64", False, {"address": "fd00::2", "prefixlen": 64}),
])
def test_address_add(iface, nodad, kwargs):
    _, ifaddrmsg, _ = netlink.messages()
    ours = _ours(links.address_message(3, iface, nodad=nodad), netlink.RTM_NEWADDR, netlink.CREATE)
    _same(ifaddrmsg, ours, _pyroute2(lambda b: b.addr("add", index=3, **kwargs)))


@pytest.mark.parametrize("iface, kwargs", [
    ("10.1.0.9/24", {"address": "10.1.0.9", "prefixlen": 24}),
    ("fd00::9/64", {"address": "fd00::9", "prefixlen": 64}),
])
def test_address_delete(iface, kwargs):
    _, ifaddrmsg, _ = netlink.messages()
    ours = _ours(links.address_message(3, iface, delete=True), netlink.RTM_DELADDR, 0)
    _same(ifaddrmsg, ours, _pyroute2(lambda b: b.addr("del", index=3, **kwargs)))


@pytest.mark.parametrize("route, extra", [
    ({"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"gateway": "10.1.0.1"}),
    ({"dst": "10.2.0.0/16"}, {}),
    ({"dst": "10.2.0.0/16", "gw": "10.1.0.1", "table": 100}, {"gateway": "10.1.0.1", "table": 100}),
    ({"dst": "10.2.0.0/16", "table": 1000}, {"table": 1000}),
    ({"dst": "10.2.0.0/16", "scope": 253}, {"scope": 253}),
    ({"dst": "10.2.0.0/16", "priority": 7}, {"priority": 7}),
    ({"dst": "10.2.0.0/16", "mtu": 1400, "advmss": 1360}, {"metrics": {"RTAX_MTU": 1400, "RTAX_ADVMSS": 1360}}),
    ({"dst": "::/0", "gw": "fd00::1"}, {"gateway": "fd00::1"}),
    ({"dst": "fd01::/64", "priority": 5, "table": 300}, {"priority": 5, "table": 300}),
])
def test_route_add(route, extra):
    """As links.add_route asked pyroute2 before: proto boot, the destination as dst + dst_len."""
    _, _, rtmsg = netlink.messages()
    import ipaddress

    dst = ipaddress.ip_network(route["dst"])
    kwargs = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": 3,
              "family": 2 if dst.version == 4 else 10, "proto": 3, **extra}
    ours = _ours(links.route_message(3, route), netlink.RTM_NEWROUTE, netlink.CREATE)
    _same(rtmsg, ours, _pyroute2(lambda b: b.route("add", **kwargs)))


@pytest.mark.parametrize("key, value", [("mtu", 1 << 40), ("table", 1 << 33), ("priority", -1), ("advmss", 1 << 32)])
def test_route_numbers_beyond_u32_are_a_config_error(key, value):
    from pycni.spec.errors import CNIError

    with pytest.raises(CNIError) as err:
        links.route_message(3, {"dst": "10.2.0.0/16", key: value})
    assert err.value.code == 7
