"""podman (Debian's 4.3, CNI backend) confined to a scratch directory and a node namespace.

Every podman command runs through `nsenter --net=<node>`: the containers' conmon processes inherit the
node namespace, podman execs the CNI plugins there, and the pod namespaces it creates hang off that
node's bridge. Config, storage (root, runroot, tmp) and events all live under `scratch`; only the
containers' network namespaces are files in /var/run/netns (netns-<uuid>), as podman has no option
to move them.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.netns import Node

CONTAINERS_CONF = """\
# podman for pycni's runtime tests (CONTAINERS_CONF points here; nothing else is read)
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{conf_dir}"
default_network = "{network}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{scratch}/events.log"
runtime = "runc"
tmp_dir = "{scratch}/tmp"
# file locks live in tmp_dir/locks; the default "shm" leaves /dev/shm/libpod_lock behind
lock_type = "file"

[containers]
# this machine lacks CAP_SYS_RESOURCE: podman's default nofile/nproc (1048576) make runc's setrlimit fail
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
"""


class Podman:
    def __init__(self, node: Node, scratch: Path, bin_dir: Path, conf_dir: Path, network: str):
        self.node, self.scratch, self.network = node, scratch, network
        self.conf = scratch / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF.format(bin_dir=bin_dir, conf_dir=conf_dir, network=network,
                                                    scratch=scratch))
        (scratch / "tmp").mkdir(exist_ok=True)
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "CONTAINERS_CONF": str(self.conf), "HOME": str(scratch), "LANG": "C.UTF-8"}

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.scratch / "root"), "--runroot", str(self.scratch / "runroot"),
                "--storage-driver", "overlay", "--tmpdir", str(self.scratch / "tmp"), *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60):
        return self.node.run(*self.argv(*args), check=check, timeout=timeout, env=self.env)

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", "--type", "container", name).stdout)[0]

    def address(self, name: str) -> tuple[str, str]:
        """(IP address on our network, network namespace path) of a running container."""
        settings = self.inspect(name)["NetworkSettings"]
        return settings["Networks"][self.network]["IPAddress"], settings["SandboxKey"]

    def names(self) -> list[str]:
        out = self("ps", "-a", "--format", "{{.Names}}", check=False).stdout
        return out.split()
