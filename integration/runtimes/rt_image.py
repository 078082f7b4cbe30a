"""A tiny busybox-static image, built offline: a rootfs directory (podman --rootfs) and an OCI
image-layout tarball (`ctr -n k8s.io images import`) usable both as CRI sandbox ("pause") image and as
the image of app containers.

Content: /bin/busybox (Debian's busybox-static), a symlink in /bin for every applet, /pause (a shell
loop that exits on TERM/INT - PID 1 has no default signal handlers) and /www/index.html.
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
PAUSE_SCRIPT = b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"
INDEX_HTML = b"hello from a pycni pod\n"
DIRS = ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "www", "var"]


def applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return sorted(a for a in out if a != "busybox" and "/" not in a)


def build_rootfs(dest: Path) -> Path:
    """A directory tree for `podman run --rootfs`."""
    for d in DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    for a in applets():
        link = dest / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    (dest / "pause").write_bytes(PAUSE_SCRIPT)
    (dest / "pause").chmod(0o755)
    (dest / "www/index.html").write_bytes(INDEX_HTML)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    return dest


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644,
         link: str | None = None) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    ti.mode = mode
    if data is None and link is None:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
        tf.addfile(ti)
    elif link is not None:
        ti.type = tarfile.SYMTYPE
        ti.linkname = link
        tf.addfile(ti)
    else:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def build_oci_tar(out: Path, name: str) -> Path:
    """An OCI image layout tarball with one layer; `name` is the reference containerd registers."""
    lbuf = io.BytesIO()
    with tarfile.open(fileobj=lbuf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in DIRS:
            _add(tf, d)
        _add(tf, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for a in applets():
            _add(tf, f"bin/{a}", link="busybox")
        _add(tf, "pause", PAUSE_SCRIPT, 0o755)
        _add(tf, "www/index.html", INDEX_HTML)
        _add(tf, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
        _add(tf, "etc/group", b"root:x:0:\n")
    layer = lbuf.getvalue()
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "pycni integration/runtimes/rt_image.py"}],
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
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
    }]}).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tf, "index.json", index)
        _add(tf, "blobs")
        _add(tf, "blobs/sha256")
        for blob in (config, manifest, layer_gz):
            _add(tf, "blobs/sha256/" + _digest(blob)[7:], blob)
    os.chmod(out, 0o644)
    return out


if __name__ == "__main__":  # python3 rt_image.py OUT.tar [NAME]  - stdlib only, no venv needed
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: rt_image.py OUT.tar [NAME (default localhost/pycni/sandbox:test)]")
    ref = sys.argv[2] if len(sys.argv) > 2 else "localhost/pycni/sandbox:test"
    print(build_oci_tar(Path(sys.argv[1]).resolve(), ref), ref)
