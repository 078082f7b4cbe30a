"""Cheap capability probes for STATUS and DEL: no pyroute2 import, nothing changed.

`host_link_names` reads /proc/net/dev, `link_kind_raw` asks rtnetlink over the raw client of
`netlink`, `can_admin_network` reads the effective capabilities of the process.
"""

from __future__ import annotations

import errno
import os

from ..spec.errors import KERNEL, CNIError
from . import netlink


def host_link_names() -> set[str]:
    """Names of the links of the current netns without netlink (cheap: no pyroute2 import)."""
    names = set()
    with open("/proc/net/dev") as fh:
        for line in fh.readlines()[2:]:
            names.add(line.split(":", 1)[0].strip())
    return names



def link_kind_raw(name: str) -> str | None:
    """Kind of link `name` ("bridge", "veth", "" when unknown), None when absent - over a raw
    rtnetlink socket, without pyroute2, so STATUS stays cheap. Raises CNIError 101 when rtnetlink
    cannot be reached."""
    import socket
    import struct

    rtm_getlink, rtm_newlink, nlmsg_error, ifla_ifname, ifla_linkinfo, ifla_info_kind = 18, 16, 2, 3, 18, 1
    encoded = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(encoded), ifla_ifname) + encoded
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BxHiII", 0, 0, 0, 0, 0) + attr
    msg = struct.pack("IHHII", 16 + len(body), rtm_getlink, 1, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5)
            sock.bind((0, 0))
            sock.send(msg)
            data = sock.recv(65536)
    except OSError as exc:
        raise CNIError(KERNEL, "rtnetlink is not reachable", str(exc)) from None
    length, mtype = struct.unpack_from("IH", data, 0)
    if mtype == nlmsg_error:
        (err,) = struct.unpack_from("i", data, 16)
        if -err in (errno.ENODEV, errno.ENOENT):
            return None
        raise CNIError(KERNEL, f"rtnetlink GETLINK {name!r} failed", os.strerror(-err))
    if mtype != rtm_newlink:
        raise CNIError(KERNEL, "unexpected rtnetlink answer", f"type {mtype}")

    for atype, payload in netlink.attrs(data, 32, length):
        if atype == ifla_linkinfo:
            for itype, ipayload in netlink.attrs(payload, 0, len(payload)):
                if itype == ifla_info_kind:
                    return ipayload.rstrip(b"\0").decode()
    return ""


def can_admin_network() -> bool:
    """CAP_NET_ADMIN (bit 12) in the effective set: needed to create bridges and veths."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return False
