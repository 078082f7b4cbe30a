"""The pycni networks a node is configured with: every plugin of type `pycni` in the conf dir's
.conflist / .conf / .json files (what libcni loads, CNI SPEC.md "Section 1: Network configuration
format"), with the network's name and cniVersion. Unreadable files are reported, not fatal."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..bridge.config import DEFAULT_BRIDGE

DEFAULT_CONF_DIR = "/etc/cni/net.d"
EXTENSIONS = (".conflist", ".conf", ".json")
BRIDGE_TYPE = "pycni"
HOST_LOCAL_TYPES = ("pycni-host-local", "host-local")  # one store format (pycni.ipam.store)


@dataclass(frozen=True)
class Network:
    name: str
    cni_version: str
    plugin: dict  # the pycni plugin's configuration, as in the file
    source: str

    @property
    def bridge(self) -> str:
        value = self.plugin.get("bridge")
        return value if isinstance(value, str) and value else DEFAULT_BRIDGE

    @property
    def ipam(self) -> dict | None:
        ipam = self.plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") in HOST_LOCAL_TYPES:
            return ipam
        return None

    def gc_config(self, valid: list[tuple[str, str]]) -> dict:
        """The GC request for this network (SPEC.md "GC": cniVersion 1.1.0, cni.dev/valid-attachments)."""
        conf = {k: v for k, v in self.plugin.items() if k not in ("prevResult", "runtimeConfig")}
        conf.update({"cniVersion": "1.1.0", "name": self.name,
                     "cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in sorted(valid)]})
        return conf


@dataclass
class Found:
    networks: list[Network] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load(conf_dir: str = DEFAULT_CONF_DIR) -> Found:
    found = Found()
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(EXTENSIONS))
    except OSError as exc:
        found.problems.append(f"{conf_dir}: {exc.strerror or exc}")
        return found
    seen: set[str] = set()
    for name in names:
        path = os.path.join(conf_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            found.problems.append(f"{path}: {exc}")
            continue
        if not isinstance(doc, dict):
            continue
        plugins = doc.get("plugins") if isinstance(doc.get("plugins"), list) else [doc]
        for plugin in plugins:
            if isinstance(plugin, dict) and plugin.get("type") == BRIDGE_TYPE and isinstance(doc.get("name"), str):
                if doc["name"] in seen:  # libcni uses the first file of a name
                    continue
                seen.add(doc["name"])
                found.networks.append(Network(doc["name"], str(doc.get("cniVersion", "")), plugin, path))
                break
    return found
