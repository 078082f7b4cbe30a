"""Images, built offline from this machine's files (no registry is ever contacted).

* The **node image** (`docker import` of a rootfs assembled here) - what kind's node image is to kind:
  containerd + containerd-shim-runc-v2 + ctr + runc (each with the shared libraries `ldd` reports), the
  reference `loopback` and `portmap` from /usr/lib/cni in /opt/cni/bin (what a kind node ships),
  iptables (xtables-nft-multi, needed by portmap), nft (the agent's masquerade), iproute2's `ip`,
  busybox-static for a shell and the usual tools, a sandbox image tarball preloaded at start, and the
  **pycni bundle** in /opt/pycni/bundle - the only Python in the image, the bundle's own. The
  entrypoint starts the pycni agent from that bundle (it installs the plugin into /opt/cni/bin and
  writes the conflist), then containerd.
* The **pod image** (an OCI image-layout tarball imported into each node's containerd): the harness's busybox
  root filesystem (integration/harness/images.py); /pause is the sandbox's process, and test pods run
  busybox's httpd.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.images import add_binary, busybox_oci_archive, busybox_rootfs, docker_import, install

POD_IMAGE = "localhost/pycni-kindlab/pod:1"
NODE_IMAGE = "pycni-kindlab/node:1"

BINARIES = {  # host path -> path in the node
    "/usr/bin/containerd": "/usr/local/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2": "/usr/local/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr": "/usr/local/bin/ctr",
    "/usr/sbin/runc": "/usr/local/sbin/runc",
    "/sbin/ip": "/usr/sbin/ip",
    "/usr/sbin/xtables-nft-multi": "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/nft": "/usr/sbin/nft",
}
CNI_PLUGINS = ("loopback", "portmap")
XTABLES_LINKS = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                 "ip6tables-restore")

CONTAINERD_TOML = """\
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/kindsock/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pod_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"""

# Started by docker's tini (--init) through integration/kind/node-preinit.sh. Runs as a kind node's systemd would:
# prepare the node, start the pycni agent (the DaemonSet pod's job on real kind), exec containerd.
ENTRYPOINT = r"""#!/bin/sh
set -e
mount --make-rshared / || echo "warn: make-rshared failed"
# docker mounts /sys read-only in non-privileged mode (the cgroup mounts: node-preinit.sh, before us)
if grep -qE ' /sys sysfs ro[,]' /proc/self/mounts; then mount -o remount,rw /sys; fi
mkdir -p /kindsock /run/containerd /var/lib/cni /etc/cni/net.d /var/log
rm -f /kindsock/containerd.sock /kindsock/containerd.sock.ttrpc
# The agent, from the bundle's own interpreter: `pycni agent` once the CLI dispatches it, else
# `python -m pycni.agent` with the bundle's python3 (the same code either way).
B=/opt/pycni/bundle
if "$B/pycni" agent --help </dev/null >/dev/null 2>&1; then AGENT="$B/pycni agent"
else AGENT="$B/pycni.d/bin/python3 -I -m pycni.agent"; fi
echo "agent command: $AGENT" > /var/log/pycni-agent.log
# shellcheck disable=SC2086 # $AGENT is a command line on purpose
$AGENT --node-name "$NODE_NAME" --nodes-file /etc/pycni/nodes.json --bundle-dir "$B" \
  --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d --cluster-cidr "$CLUSTER_CIDR" \
  --interval "${AGENT_INTERVAL:-1}" --plugin-log-file /var/log/pycni.log --log-level INFO \
  </dev/null >>/var/log/pycni-agent.log 2>&1 &
echo $! > /run/pycni-agent.pid
(
  for _ in $(seq 1 400); do ctr version >/dev/null 2>&1 && break; sleep 0.05; done
  ctr -n k8s.io images import /kind/pod-image.tar > /var/log/image-import.log 2>&1 && touch /run/kindlab-ready
) &
exec containerd --config /etc/containerd/config.toml
"""


def build_node_rootfs(root: Path, bundle_dir: Path, pod_image_tar: Path) -> Path:
    for d in ("usr/local/bin", "usr/local/sbin", "etc/containerd", "etc/cni/net.d", "etc/pycni", "opt/cni/bin",
              "opt/pycni", "var/lib/containerd", "var/lib/cni", "var/log", "kind", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")  # containerd's /var/run/netns lives on the node's /run tmpfs
    for src, dst in BINARIES.items():  # before busybox: these win over its applets of the same name
        add_binary(root, src, dst)
    for t in XTABLES_LINKS:
        (root / "usr/sbin" / t).symlink_to("xtables-nft-multi")
    xt = Path("/usr/lib/x86_64-linux-gnu/xtables")
    if xt.is_dir():  # match/target modules iptables dlopen()s (portmap's DNAT, comment, multiport...)
        shutil.copytree(xt, root / "usr/lib/x86_64-linux-gnu/xtables", symlinks=True)
    busybox_rootfs(root)
    for plugin in CNI_PLUGINS:
        install(f"/usr/lib/cni/{plugin}", root / "opt/cni/bin" / plugin)
    shutil.copytree(bundle_dir, root / "opt/pycni/bundle", symlinks=True)
    shutil.copy2(pod_image_tar, root / "kind/pod-image.tar")
    (root / "etc/containerd/config.toml").write_text(CONTAINERD_TOML.format(pod_image=POD_IMAGE))
    (root / "usr/local/bin/entrypoint").write_text(ENTRYPOINT)
    (root / "usr/local/bin/entrypoint").chmod(0o755)
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    return root


def import_node_image(root: Path, docker_env: dict[str, str], ref: str = NODE_IMAGE) -> None:
    """`tar -C root -c . | docker import` (the harness's docker_import)."""
    docker_import(root, ref, [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV CONTAINERD_ADDRESS=/kindsock/containerd.sock",
        "ENV CONTAINERD_NAMESPACE=k8s.io",
        'ENTRYPOINT ["/usr/local/bin/entrypoint"]',
    ], env=docker_env)


def build_pod_image(out: Path, ref: str = POD_IMAGE) -> Path:
    """The pod (and sandbox) image: the harness's busybox root filesystem as an OCI archive."""
    return busybox_oci_archive(out, ref)
