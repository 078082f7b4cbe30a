"""A kind-style cluster in our CI: docker node containers (dockerd confined to a namespace of our own),
each running the pycni agent and containerd's CRI; see kl_local.py. Marker `cluster`.

Back ends (the `cluster` fixture is parametrized over both):
* `local` - always (needs root, Debian's docker.io/containerd/runc/containernetworking-plugins/busybox-static,
  and the venv's `docker` and `container-runtime-interface-api` packages; skipped otherwise);
* `kind`  - only when PYCNI_KIND_CONTEXT names a kubectl context of a kind cluster running pycni
  (integration/kind/run-e2e.sh); the same checks then go through kubectl.

PYCNI_BUNDLE_DIR=<dir> uses an already built bundle (a `build/bundle` with this checkout's agent)
instead of building one into the scratch dir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness.cleanup import Cleanup, interrupt_on_sigterm
from harness.netns import NETNS_DIR
from harness.processes import comm, missing, pid_alive
from harness.scratch import cgroup_exists, mounts_under, preflight

NEEDED = ["dockerd", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "nsenter", "ip", "ldd", "tar",
          "xtables-nft-multi", "nft"]


def pytest_configure(config):
    interrupt_on_sigterm()
    config.addinivalue_line("markers", "cluster: a kind-style cluster (docker node containers in a dedicated "
                                       "namespace, or a real kind cluster); needs root")


def _missing() -> list[str]:
    out = missing(NEEDED, ["/bin/busybox", "/usr/lib/cni/loopback", "/usr/lib/cni/portmap"])
    try:
        import cri_api  # noqa: F401
        import docker  # noqa: F401
        import grpc  # noqa: F401
    except ImportError as exc:
        out.append(f"python package ({exc.name})")
    return out


@pytest.fixture(scope="session")
def local_cluster():
    reason = preflight("pycnikl", _missing())
    if reason:
        pytest.skip(f"the local cluster: {reason}")
    from kl_local import LocalCluster

    cleanup = Cleanup()
    bundle = os.environ.get("PYCNI_BUNDLE_DIR")
    cluster = LocalCluster(cleanup, n_nodes=3, bundle=Path(bundle) if bundle else None)
    try:
        cluster.up()
        yield cluster
    finally:
        host, scratch = cluster.host, cluster.scratch
        dockerd_pid = host.pid if host is not None else None
        try:
            created = (host.run_dir / "created-host-paths").read_text().split() if host is not None else []
        except OSError:
            created = []
        cleanup.run_all()
        left = []
        if host is not None:
            if (NETNS_DIR / host.netns).exists():
                left.append(f"netns {host.netns}")
            if host.run_dir.exists():
                left.append(f"dockerd run dir {host.run_dir}")
            if dockerd_pid is not None and pid_alive(dockerd_pid):
                left.append(f"dockerd {dockerd_pid}")
            if cgroup_exists(host.cgroup_parent):
                left.append(f"cgroup {host.cgroup_parent}")
            # dockerd.sh removes the host files dockerd 20.10 always writes when this run created them and no
            # other dockerd runs (another session's may use them)
            if not [p for p in os.listdir("/proc") if p.isdigit() and comm(p) == "dockerd"]:
                left += [f"host path {p}" for p in created if os.path.lexists(p)]
        if scratch is not None:
            if scratch.path.exists():
                left.append(f"scratch {scratch.path}")
            if mounts_under(scratch.path):
                left.append(f"mounts {mounts_under(scratch.path)}")
        assert not left, f"left behind: {left}"
        assert not cleanup.errors, f"cleanup errors: {cleanup.errors}"


@pytest.fixture(scope="session")
def kind_cluster():
    context = os.environ.get("PYCNI_KIND_CONTEXT")
    if not context:
        pytest.skip("set PYCNI_KIND_CONTEXT to a kind cluster running pycni (integration/kind/run-e2e.sh)")
    from kl_kube import KubectlCluster

    cluster = KubectlCluster(context=context)
    cluster.setup()
    try:
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture(scope="module", params=["local", "kind"])
def cluster(request):
    return request.getfixturevalue(f"{request.param}_cluster")
