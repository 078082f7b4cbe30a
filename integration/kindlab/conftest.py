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
import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kl_host import NETNS_DIR, Cleanup, log, mounts_under, pids_in_netns, reap_stale

NEEDED = ["dockerd", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "nsenter", "ip", "ldd", "tar",
          "xtables-nft-multi", "nft"]


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    config.addinivalue_line("markers", "cluster: a kind-style cluster (docker node containers in a dedicated "
                                       "namespace, or a real kind cluster); needs root")


def _missing() -> list[str]:
    out = [b for b in NEEDED if not shutil.which(b)]
    for f in ("/bin/busybox", "/usr/lib/cni/loopback", "/usr/lib/cni/portmap"):
        if not os.path.exists(f):
            out.append(f)
    try:
        import cri_api  # noqa: F401
        import docker  # noqa: F401
        import grpc  # noqa: F401
    except ImportError as exc:
        out.append(f"python package ({exc.name})")
    return out


@pytest.fixture(scope="session")
def local_cluster():
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    missing = _missing()
    if missing:
        pytest.skip(f"missing: {', '.join(missing)} (make deps; make venv)")
    for item in reap_stale():
        log(f"reaped a killed earlier run: {item}")
    from kl_local import LocalCluster

    cleanup = Cleanup()
    bundle = os.environ.get("PYCNI_BUNDLE_DIR")
    cluster = LocalCluster(cleanup, n_nodes=3, bundle=Path(bundle) if bundle else None)
    try:
        cluster.up()
        yield cluster
    finally:
        host = cluster.host
        cleanup.run_all()
        if host is not None:
            left = []
            if (NETNS_DIR / host.netns).exists():
                left.append(f"netns {host.netns}")
            if host.scratch.exists():
                left.append(f"scratch {host.scratch}")
            if mounts_under(str(host.scratch)):
                left.append(f"mounts {mounts_under(str(host.scratch))}")
            if host.pid is not None:
                left.append(f"dockerd {host.pid}")
            if any(os.path.isdir(f"/sys/fs/cgroup/{c}/{host.cgroup_parent.strip('/')}")
                   for c in os.listdir("/sys/fs/cgroup")):
                left.append(f"cgroup {host.cgroup_parent}")
            left += [f"host path {p}" for p in host.created_host_paths if p.exists()]
            assert not left, f"left behind: {left}"
            assert not cleanup.errors, f"cleanup errors: {cleanup.errors}"
            assert not pids_in_netns(host.ns_path)


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
