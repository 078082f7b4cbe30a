"""Real container runtimes (containerd's CRI plugin, podman's CNI backend) drive the plugin under test.

The plugin under test is a parameter: PYCNI_RUNTIMES_PLUGIN=pycni (default: `pycni` + `pycni-host-local`
installed with `make install` into a scratch CNI bin dir) or =reference (Debian's `bridge` + `host-local`,
to debug the harness itself). loopback and portmap always come from Debian's /usr/lib/cni.

Everything lives under one scratch directory (/tmp/pycnirt-*), in node network namespaces created here,
and is recorded in the scratch dir's ledger. Removal is layered: fixture finalizers (CRI RemovePodSandbox,
`podman rm -f`, daemons stopped by PID, namespaces deleted), then the session's sweep (processes left in
our namespaces, mounts under the scratch dir, shim sockets, cgroups); an atexit hook runs the same if
pytest exits early, SIGTERM is turned into KeyboardInterrupt so finalizers run, and a run killed with
SIGKILL is reaped by the next one (`reap_stale`). Logs of the last run are copied to build/runtimes-logs/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.cleanup import Cleanup, interrupt_on_sigterm, log
from harness.netns import NETNS_DIR, Node, link_client
from harness.processes import missing
from harness.scratch import Scratch, mounts_under, preflight

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = Path("/usr/lib/cni")
PLUGIN = os.environ.get("PYCNI_RUNTIMES_PLUGIN", "pycni")
NEEDED = ["containerd", "ctr", "runc", "containerd-shim-runc-v2", "podman", "conmon", "nsenter", "ip",
          "iptables-save", "nft", "ping"]


def pytest_configure(config):
    interrupt_on_sigterm()
    config.addinivalue_line("markers", "runtimes: real container runtimes (containerd CRI, podman) drive the "
                                       "plugin inside node namespaces; needs root")


def _missing() -> list[str]:
    plugins = ("loopback", "portmap") + (("bridge", "host-local") if PLUGIN == "reference" else ())
    return missing(NEEDED, ["/bin/busybox"] + [str(REFERENCE_DIR / p) for p in plugins])


@dataclass
class Session:
    scratch: Path
    plugin: str          # "pycni" or "reference"
    bin_dir: Path
    cgroup_parent: str   # every pod/container cgroup goes below this one, removed at the end
    nodes: list[Node]
    cleanup: Cleanup
    ledger: Scratch

    def new_node(self, prefix: str) -> Node:
        node = Node(prefix, self.cleanup, self.ledger)
        self.nodes.append(node)
        return node

    def new_client(self, node: Node, prefix: str, node_cidr: str, client_cidr: str) -> Node:
        client = link_client(node, prefix, node_cidr, client_cidr, self.ledger)
        self.nodes.append(client)
        return client

    def own_netns(self, path: str) -> None:
        """A namespace a runtime made in /var/run/netns: reaped by the next run if this one is SIGKILLed."""
        if path.startswith((str(NETNS_DIR) + "/", "/run/netns/")):
            self.ledger.record("netns", os.path.basename(path))

    def conflist(self, name: str, bridge: str, subnet: str, data_dir: Path) -> dict:
        """pycni (or the reference bridge) + portmap, as a runtime's conf dir would hold it."""
        if self.plugin == "pycni":
            main = {"type": "pycni", "logFile": str(self.scratch / "pycni.log"), "logLevel": "INFO"}
            ipam_type = "pycni-host-local"
        else:
            main, ipam_type = {"type": "bridge"}, "host-local"
        main.update({
            "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": ipam_type, "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": str(data_dir)},
        })
        return {"cniVersion": "1.0.0", "name": name,
                "plugins": [main, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def _install_plugins(scratch: Path, plugin: str) -> Path:
    bin_dir = scratch / "cni-bin"
    bin_dir.mkdir()
    if plugin == "pycni":
        t0 = time.monotonic()
        proc = subprocess.run(["make", "-s", "-C", str(REPO), "install", f"CNI_BIN_DIR={bin_dir}",
                               f"PYCNI_HOME={scratch / 'pycni-home'}"], capture_output=True, text=True, check=False)
        if proc.returncode:
            pytest.fail(f"make install failed:\n{proc.stdout}\n{proc.stderr}")
        log(f"make install took {time.monotonic() - t0:.1f}s")
        extra = ["loopback", "portmap"]
    elif plugin == "reference":
        extra = ["bridge", "host-local", "loopback", "portmap"]
    else:
        pytest.fail(f"PYCNI_RUNTIMES_PLUGIN must be pycni or reference, not {plugin!r}")
    for name in extra:
        (bin_dir / name).symlink_to(REFERENCE_DIR / name)
    return bin_dir


@pytest.fixture(scope="session")
def rt_session():
    reason = preflight("pycnirt", _missing())
    if reason:
        pytest.skip(f"runtime tests: {reason}")
    # containerd's shims put their sockets in /run/containerd/s whatever its state dir: remove the
    # (then empty) directories afterwards if they were not there before us.
    # Likewise libcni's result cache (/var/lib/cni/results), used by both runtimes.
    run_dirs = [d for d in (Path("/run/containerd/s"), Path("/run/containerd"), Path("/var/lib/cni/results"),
                            Path("/var/lib/cni")) if not d.exists()]
    cleanup = Cleanup()
    ledger = Scratch("pycnirt", cleanup, logs="runtimes-logs")
    cgroup_parent = f"/pycnirt-{uuid.uuid4().hex[:6]}"
    ledger.record("cgroup", cgroup_parent)
    for d in run_dirs:
        ledger.record("rundir", str(d))
    session = Session(scratch=ledger.path, plugin=PLUGIN, bin_dir=Path(), cgroup_parent=cgroup_parent, nodes=[],
                      cleanup=cleanup, ledger=ledger)
    session.bin_dir = _install_plugins(ledger.path, PLUGIN)
    log(f"plugin under test: {PLUGIN}; scratch {ledger.path}")
    yield session
    ours = ledger.recorded("netns")
    cleanup.run_all()
    # Nothing of ours may survive the session.
    left = [n for n in ours if (NETNS_DIR / n).exists()]
    assert not left, f"network namespaces left: {left}"
    assert not mounts_under(ledger.path), f"mounts left: {mounts_under(ledger.path)}"
    assert not ledger.path.exists(), f"scratch dir left: {ledger.path}"
    assert not cleanup.errors, f"cleanup errors: {cleanup.errors}"
