"""What a node looks like - leases, veths, firewall rules - compared before and after pods come and go."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.netns import Node

PER_CONTAINER_CHAIN = re.compile(r"\bCNI-(DN|SN)-[0-9a-f]+|\bCNI-[0-9a-f]{24}\b")


def node_snapshot(node: Node, data_dir: Path) -> dict:
    """Leases, veths, firewall rules and addresses visible in a node namespace."""
    links = json.loads(node.run("ip", "-j", "link", "show").stdout or "[]")
    veths = sorted(link["ifname"] for link in links if link.get("linkinfo", {}).get("info_kind") == "veth"
                   or link["ifname"].startswith("veth"))
    leases = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")
                    if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved_ip"))
    ipt = node.run("iptables-save", check=False).stdout
    rules = sorted({re.sub(r"\[\d+:\d+\]", "", line).strip() for line in ipt.splitlines()
                    if line.startswith(("-A", ":"))})
    nft = node.run("nft", "list", "ruleset", check=False).stdout
    return {"veths": veths, "leases": leases, "iptables": rules, "nft": nft}


def _mentions(line: str, needle: str) -> bool:
    """`needle` (an IP or an ID) appears in `line` as a whole token: 10.77.0.2 is not 10.77.0.20."""
    return re.search(rf"(?<![\w.]){re.escape(needle)}(?![\w]|\.\d)", line) is not None


def leftover_rules(before: dict, after: dict, needles: list[str]) -> list[str]:
    """Firewall state that appeared since `before` and belongs to one container: a per-container chain,
    or any line naming a pod IP or a container ID. Shared chains a plugin keeps (CNI-HOSTPORT-DNAT, ...)
    are allowed to stay, as with the reference plugins."""
    new = [r for r in after["iptables"] if r not in before["iptables"]]
    new_nft = [line.strip() for line in after["nft"].splitlines() if line not in before["nft"].splitlines()]
    out = []
    for line in new + new_nft:
        if PER_CONTAINER_CHAIN.search(line) or any(_mentions(line, n) for n in needles if n):
            out.append(line)
    return out


def assert_node_clean(node: Node, data_dir: Path, baseline: dict, needles: list[str], netns_files: list[str]) -> dict:
    """After every pod is gone: no lease, no veth, no firewall line of theirs (`needles`: their IPs and IDs),
    no pod network namespace file left. Returns the node's snapshot."""
    after = node_snapshot(node, data_dir)
    assert after["leases"] == [], f"leases left: {after['leases']}"
    assert after["veths"] == [], f"veths left: {after['veths']}"
    left = leftover_rules(baseline, after, needles)
    assert left == [], "firewall rules left:\n" + "\n".join(left)
    for path in netns_files:
        assert not Path(path).exists(), f"pod netns {path} left"
    return after
