#!/usr/bin/env python3
"""Images built offline from this machine's files (no registry, no base image, no Dockerfile builder).

- `busybox_rootfs(root)`: a root filesystem of Debian's busybox-static, a symlink in /bin for every applet,
  /pause (a shell loop that exits on TERM/INT: PID 1 has no default signal handlers, so it serves as the CRI
  sandbox's process), /www/index.html, /etc/passwd and /etc/group. The test pods of every suite run it.
- `add_binary(root, path)`: a host binary and its `ldd` closure, at the same paths in `root`.
- `oci_archive(rootfs, out, ref)`: an OCI image-layout tarball of one layer (`ctr -n k8s.io images import`),
  usable as CRI sandbox image and as the image of app containers; reproducible (mtime 0, owner root).
- `docker_import(root, tag, changes)`: `tar -C root -c . | docker import` (DOCKER_HOST selects the engine).

Stdlib only; also a command line for the shell scripts (integration/kind/images.sh) and the README:

    images.py rootfs DIR                     busybox_rootfs
    images.py add-binary ROOT PATH...        add_binary, for each PATH
    images.py oci OUT.tar [REF]              busybox_rootfs + oci_archive (REF: localhost/pycni/sandbox:test)
    images.py docker-import ROOT TAG [CHANGE...]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE_SCRIPT = b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"
INDEX_HTML = b"hello from a pycni pod\n"
DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "var/run", "root", "www")
PATH_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin")
DEFAULT_REF = "localhost/pycni/sandbox:test"


def applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return sorted(a for a in out if a != "busybox" and "/" not in a)


def busybox_rootfs(root: Path) -> Path:
    """busybox and its applets in `root` (an applet is not linked where `root` already has a program of that
    name on its PATH: binaries added first win)."""
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for a in applets():
        if not any((root / d / a).exists() or (root / d / a).is_symlink() for d in PATH_DIRS):
            (root / "bin" / a).symlink_to("busybox")
    (root / "pause").write_bytes(PAUSE_SCRIPT)
    (root / "pause").chmod(0o755)
    (root / "www/index.html").write_bytes(INDEX_HTML)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return root


def ldd_libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def install(src: str, dest: Path, mode: int = 0o755) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dest)
    os.chmod(dest, mode)


def add_binary(root: Path, path: str, dest: str | None = None) -> None:
    """The binary at `path` (at `dest` in `root`, default the same path) and every library `ldd` lists for it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} (make deps)")
    install(path, root / (dest or path).lstrip("/"))
    for lib in ldd_libs(path):
        target = root / lib.lstrip("/")
        if not target.exists():
            install(lib, target)


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _as_root(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "root", "root"
    return ti


def _tar_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries.items():
            ti = _as_root(tarfile.TarInfo(name))
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def oci_archive(rootfs: Path, out: Path, ref: str = DEFAULT_REF, entrypoint: tuple[str, ...] = ("/pause",),
                env: tuple[str, ...] = ("PATH=/bin",)) -> Path:
    """`rootfs` as the one layer of an OCI image layout tarball; `ref` is the name containerd registers."""
    lbuf = io.BytesIO()
    with tarfile.open(fileobj=lbuf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in sorted(os.listdir(rootfs)):
            tf.add(rootfs / entry, arcname=entry, filter=_as_root)
    layer = lbuf.getvalue()
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Env": list(env), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "pycni integration/harness/images.py"}],
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
    entries = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index, "blobs": None,
               "blobs/sha256": None}
    entries.update({"blobs/sha256/" + _digest(b)[7:]: b for b in (config, manifest, layer_gz)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_tar_bytes(entries))
    os.chmod(out, 0o644)
    return out


def busybox_oci_archive(out: Path, ref: str = DEFAULT_REF) -> Path:
    """The busybox root filesystem as an OCI archive (built in a temporary directory next to `out`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".rootfs-") as tmp:
        return oci_archive(busybox_rootfs(Path(tmp)), out, ref)


def docker_import(root: Path, tag: str, changes: list[str], env: dict[str, str] | None = None) -> None:
    """`tar -C root --numeric-owner -c . | docker import -c CHANGE... - TAG`."""
    args = [a for c in changes for a in ("-c", c)]
    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    proc = subprocess.run(["docker", "import", *args, "-", tag], stdin=tar.stdout, capture_output=True,
                          text=True, env=env, check=False)
    tar.stdout.close()
    if tar.wait() or proc.returncode:
        raise RuntimeError(f"docker import {tag} failed (tar {tar.returncode}, docker {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")


def main(argv: list[str]) -> int:
    usage = __doc__.split("command line for the shell scripts")[1].split("\n", 1)[1]
    if not argv or argv[0] not in ("rootfs", "add-binary", "oci", "docker-import"):
        sys.stderr.write(f"usage:\n{usage}")
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "rootfs" and len(args) == 1:
            busybox_rootfs(Path(args[0]))
        elif cmd == "add-binary" and len(args) >= 2:
            for path in args[1:]:
                add_binary(Path(args[0]), path)
        elif cmd == "oci" and len(args) in (1, 2):
            ref = args[1] if len(args) == 2 else DEFAULT_REF
            print(busybox_oci_archive(Path(args[0]).resolve(), ref), ref)
        elif cmd == "docker-import" and len(args) >= 2:
            docker_import(Path(args[0]), args[1], args[2:])
            print(f"images.py: built {args[1]}")
        else:
            sys.stderr.write(f"usage:\n{usage}")
            return 2
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"images.py {cmd}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
