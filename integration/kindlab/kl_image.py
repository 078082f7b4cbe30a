"""Images, built offline from this machine's files (no registry is ever contacted).

* The **node image** (`docker import` of a rootfs assembled here) - what kind's node image is to kind:
  containerd + containerd-shim-runc-v2 + ctr + runc (each with the shared libraries `ldd` reports), the
  reference `loopback` and `portmap` from /usr/lib/cni in /opt/cni/bin (what a kind node ships),
  iptables (xtables-nft-multi, needed by portmap), nft (the agent's masquerade), iproute2's `ip`,
  busybox-static for a shell and the usual tools, a sandbox image tarball preloaded at start, and the
  **pycni bundle** in /opt/pycni/bundle - the only Python in the image, the bundle's own. The
  entrypoint starts the pycni agent from that bundle (it installs the plugin into /opt/cni/bin and
  writes the conflist), then containerd.
* The **pod image** (an OCI image-layout tarball imported into each node's containerd): busybox-static
  only; /pause is the sandbox's process, and test pods run busybox's httpd.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
POD_IMAGE = "localhost/pycni-kindlab/pod:1"
NODE_IMAGE = "pycni-kindlab/node:1"
PAUSE = b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"

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

# PID 1 is docker's tini (--init). Runs as a kind node's systemd would: prepare the node, start the
# pycni agent (the DaemonSet pod's job on real kind), exec containerd.
ENTRYPOINT = r"""#!/bin/sh
set -e
mount --make-rshared / || echo "warn: make-rshared failed"
# docker mounts /sys and the cgroup v1 hierarchies read-only in non-privileged mode: remount them rw
if grep -qE ' /sys sysfs ro[,]' /proc/self/mounts; then mount -o remount,rw /sys; fi
grep -E ' /sys/fs/cgroup[^ ]* (tmpfs|cgroup2?) ro[,]' /proc/self/mounts | while read -r _ mp _; do
  mount -o remount,rw "$mp" 2>/dev/null || mount -o remount,bind,rw "$mp" || echo "warn: cannot remount $mp rw"
done
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


def _ldd_libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def _install(src: str, dest: Path, mode: int = 0o755) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dest)
    os.chmod(dest, mode)


def build_node_rootfs(root: Path, bundle_dir: Path, pod_image_tar: Path) -> Path:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin", "etc/containerd",
              "etc/cni/net.d", "etc/pycni", "opt/cni/bin", "opt/pycni", "var/lib/containerd", "var/lib/cni",
              "var/log", "proc", "sys", "dev", "tmp", "run", "kind", "root", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")
    (root / "tmp").chmod(0o1777)
    for src, dst in BINARIES.items():
        if not os.path.exists(src):
            raise FileNotFoundError(f"{src} (make deps)")
        _install(src, root / dst.lstrip("/"))
        for lib in _ldd_libs(src):
            target = root / lib.lstrip("/")
            if not target.exists():
                _install(lib, target)
    for t in XTABLES_LINKS:
        (root / "usr/sbin" / t).symlink_to("xtables-nft-multi")
    xt = Path("/usr/lib/x86_64-linux-gnu/xtables")
    if xt.is_dir():  # match/target modules iptables dlopen()s (portmap's DNAT, comment, multiport...)
        shutil.copytree(xt, root / "usr/lib/x86_64-linux-gnu/xtables", symlinks=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in applets():
        link = root / "bin" / applet
        if not link.exists() and not (root / "usr/sbin" / applet).exists():
            link.symlink_to("busybox")
    for plugin in CNI_PLUGINS:
        _install(f"/usr/lib/cni/{plugin}", root / "opt/cni/bin" / plugin)
    shutil.copytree(bundle_dir, root / "opt/pycni/bundle", symlinks=True)
    shutil.copy2(pod_image_tar, root / "kind/pod-image.tar")
    (root / "etc/containerd/config.toml").write_text(CONTAINERD_TOML.format(pod_image=POD_IMAGE))
    (root / "usr/local/bin/entrypoint").write_text(ENTRYPOINT)
    (root / "usr/local/bin/entrypoint").chmod(0o755)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    return root


def import_node_image(client, root: Path, tar_path: Path, ref: str = NODE_IMAGE) -> None:
    """`tar -C root -c . | docker import` through the SDK (the API's image import)."""
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar_path), "."], check=True)
    repo, tag = ref.rsplit(":", 1)
    client.api.import_image(src=str(tar_path), repository=repo, tag=tag, changes=[
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV CONTAINERD_ADDRESS=/kindsock/containerd.sock",
        "ENV CONTAINERD_NAMESPACE=k8s.io",
        'ENTRYPOINT ["/usr/local/bin/entrypoint"]',
    ])


# -- the pod image (OCI image layout) ---------------------------------------------------------------------


def applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return sorted(a for a in out if a != "busybox" and "/" not in a)


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644, link: str | None = None):
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    ti.mode = mode
    if link is not None:
        ti.type = tarfile.SYMTYPE
        ti.linkname = link
        tf.addfile(ti)
    elif data is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(ti)
    else:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def build_pod_image(out: Path, ref: str = POD_IMAGE) -> Path:
    lbuf = io.BytesIO()
    with tarfile.open(fileobj=lbuf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run", "var", "www"):
            _add(tf, d)
        _add(tf, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for a in applets():
            _add(tf, f"bin/{a}", link="busybox")
        _add(tf, "pause", PAUSE, 0o755)
        _add(tf, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
        _add(tf, "etc/group", b"root:x:0:\n")
    layer = lbuf.getvalue()
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer_gz),
                    "size": len(layer_gz)}],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]},
    }]}).encode()
    with tarfile.open(out, "w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tf, "index.json", index)
        _add(tf, "blobs")
        _add(tf, "blobs/sha256")
        for blob in (config, manifest, layer_gz):
            _add(tf, "blobs/sha256/" + _digest(blob)[7:], blob)
    return out
