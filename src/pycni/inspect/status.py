"""`pycni status [--json]`: the node as pycni sees it.

  daemon      from its run state file (runstate.py) next to the socket, checked: is the pid alive
              and does the socket accept a connection? version, uptime, workers and worker processes, metrics address;
  networks    each pycni network of the conf dir: its bridge in this network namespace (up, addresses,
              ports), its pool (leased / capacity per range), masquerading (ipMasq: the nftables
              chain and address-set entries, or the iptables chain and rules, bridge/masquerade.py);
  agent       the node agent's last round from its state file (when, how long, changes, errors).
Reads only. Exit status 0 when everything found looks healthy, 1 otherwise (no daemon, a missing
bridge with leases held, an agent round with errors).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import time

from .. import runstate
from ..daemon.wire import DEFAULT_SOCKET, SOCKET_ENV
from . import netconfs, output, pools


def daemon_status(sock: str) -> dict:
    state = runstate.read(runstate.daemon_file(sock)) or {}
    out = {"socket": sock, "running": False, "version": state.get("version"), "pid": state.get("pid"),
           "workers": state.get("workers"), "processes": state.get("processes"),
           "metrics": state.get("metrics") or None, "uptimeSeconds": None}
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(sock)
        out["running"] = True
    except OSError as exc:
        out["error"] = f"socket: {exc.strerror or exc}"
    finally:
        probe.close()
    if out["running"] and isinstance(state.get("started"), (int, float)):
        out["uptimeSeconds"] = round(time.time() - state["started"], 1)
    return out


def _links(nl):
    from ..bridge import links

    return links.links_with_alias_prefix(nl, "")  # every link of this netns


def bridge_status(name: str, all_links, nl) -> dict:
    from ..bridge import links

    br = next((link for link in all_links if link.name == name), None)
    if br is None:
        return {"name": name, "exists": False}
    return {"name": name, "exists": True, "kind": br.kind, "up": bool(br.flags & links.IFF_UP),
            "addresses": [a.address for a in links.addresses(nl, br.index)],
            "ports": sum(1 for link in all_links if link.master == br.index)}


def masq_status(net: netconfs.Network) -> dict:
    from ..bridge import masquerade

    if not net.plugin.get("ipMasq"):
        return {"enabled": False}
    nid = masquerade.network_id(net.name)
    out: dict = {"enabled": True, "backend": net.plugin.get("ipMasqBackend") or "auto"}
    if shutil.which("nft"):
        proc = subprocess.run(["nft", "-j", "list", "table", "inet", masquerade.TABLE], capture_output=True,
                              text=True, timeout=15, check=False)
        if proc.returncode == 0:
            objs = [o for o in json.loads(proc.stdout).get("nftables", []) if isinstance(o, dict)]
            chains = {o["chain"]["name"] for o in objs if "chain" in o}
            entries = sum(len(o["set"].get("elem", [])) for o in objs
                          if "set" in o and o["set"]["name"] in (f"a4_{nid}", f"a6_{nid}"))
            if f"masq_{nid}" in chains:
                out.update(nftables={"chain": f"inet {masquerade.TABLE} masq_{nid}", "podAddresses": entries})
    if shutil.which("iptables"):
        chain = masquerade.Iptables.chain(net.name)
        rules = 0
        present = False
        for tool in ("iptables", "ip6tables"):
            if not shutil.which(tool):
                continue
            proc = subprocess.run([tool, "-w", "-t", "nat", "-S", chain], capture_output=True, text=True,
                                  timeout=15, check=False)
            if proc.returncode == 0:
                present = True
                rules += sum(1 for line in proc.stdout.splitlines() if line.startswith("-A "))
        if present:
            out["iptables"] = {"chain": chain, "rules": rules}
    out["installed"] = "nftables" in out or "iptables" in out
    return out


def collect(args) -> dict:
    from ..bridge import netlink

    with netlink.handles() as nl:
        return _collect(args, nl)


def _collect(args, nl) -> dict:
    doc: dict = {"daemon": daemon_status(args.socket), "networks": [], "problems": []}
    found = netconfs.load(args.conf_dir)
    doc["problems"] += found.problems
    try:
        all_links = _links(nl)
    except Exception as exc:  # noqa: BLE001 - no netlink (a restricted container): report, go on
        all_links = None
        doc["problems"].append(f"netlink: {type(exc).__name__}: {exc}")
    for net in found.networks:
        entry: dict = {"name": net.name, "source": net.source, "cniVersion": net.cni_version}
        if all_links is not None:
            entry["bridge"] = bridge_status(net.bridge, all_links, nl)
        pool = pools.from_ipam(net.name, net.ipam) if net.ipam else None
        if pool is not None:
            entry["pool"] = {"dataDir": pool.data_dir,
                             "ranges": [{"range": u.range, "subnet": u.subnet, "leased": u.leased,
                                         "capacity": u.capacity} for u in pools.usage(pool)]}
            leased = sum(r["leased"] for r in entry["pool"]["ranges"])
            if leased and all_links is not None and not entry["bridge"]["exists"]:
                doc["problems"].append(f"network {net.name}: {leased} lease(s) held but bridge {net.bridge} is missing")
        try:
            entry["masquerade"] = masq_status(net)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            entry["masquerade"] = {"error": str(exc)}
        doc["networks"].append(entry)
    agent = runstate.read(args.agent_state)
    if agent:
        last = agent.get("lastRound") or {}
        doc["agent"] = {"node": agent.get("node"), "lastRound": last, "totals": agent.get("totals"),
                        "lastRoundAgeSeconds": round(time.time() - last["time"], 1)
                        if isinstance(last.get("time"), (int, float)) else None}
        if last.get("errors"):
            doc["problems"].append(f"agent: last round had {len(last['errors'])} error(s)")
    else:
        doc["agent"] = None
    if not doc["daemon"]["running"]:
        doc["problems"].append("daemon: not running (plugins run standalone)")
    return doc


def render(doc: dict) -> None:
    d = doc["daemon"]
    if d["running"]:
        print(f"daemon: running, version {d['version']}, pid {d['pid']}, up {output.age(d['uptimeSeconds'])}, "
              f"{d['workers']} workers in {d['processes'] or 1} process(es), metrics {d['metrics'] or 'off'}  "
              f"({d['socket']})")
    else:
        print(f"daemon: not running ({d['socket']}: {d.get('error', '?')})")
    for net in doc["networks"]:
        print(f"network {net['name']} ({net['source']}, cniVersion {net['cniVersion']})")
        br = net.get("bridge")
        if br is not None:
            if br["exists"]:
                print(f"  bridge {br['name']}: {'up' if br['up'] else 'DOWN'}, {br['ports']} port(s), "
                      f"addresses {', '.join(br['addresses']) or '-'}")
            else:
                print(f"  bridge {br['name']}: absent (created by the first ADD)")
        for r in (net.get("pool") or {}).get("ranges", []):
            pct = 100.0 * r["leased"] / r["capacity"] if r["capacity"] else 0.0
            print(f"  pool {r['range']} ({r['subnet']}): {r['leased']}/{r['capacity']} leased ({pct:.1f}%)")
        m = net.get("masquerade", {})
        if not m.get("enabled"):
            print("  masquerade: off (ipMasq false)")
        elif "error" in m:
            print(f"  masquerade: cannot read: {m['error']}")
        else:
            parts = []
            if "nftables" in m:
                parts.append(f"nftables {m['nftables']['chain']}, {m['nftables']['podAddresses']} pod address(es)")
            if "iptables" in m:
                parts.append(f"iptables chain {m['iptables']['chain']}, {m['iptables']['rules']} rule(s)")
            print(f"  masquerade: {'; '.join(parts) or 'no rules installed (none until the first ADD)'}")
    a = doc.get("agent")
    if a:
        last = a["lastRound"]
        print(f"agent: node {a['node']}, last round {output.age(a['lastRoundAgeSeconds'])} ago in "
              f"{last.get('seconds')}s, {len(last.get('changes', []))} change(s), {len(last.get('errors', []))} "
              f"error(s); rounds {a['totals'].get('rounds')}, routes removed {a['totals'].get('routesRemoved')}")
        for err in last.get("errors", []):
            print(f"  error: {err}")
    else:
        print("agent: no state file")
    for problem in doc["problems"]:
        print(f"problem: {problem}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pycni status", description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)
    p.add_argument("--conf-dir", default=netconfs.DEFAULT_CONF_DIR)
    p.add_argument("--agent-state", default=runstate.DEFAULT_AGENT_STATE)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    doc = collect(args)
    if args.json:
        output.dump(doc)
    else:
        render(doc)
    return 1 if doc["problems"] else 0
