"""Write several images into ONE docker-archive tarball (what `docker save a b c` writes; `docker load`,
`ctr images import` and `kind load image-archive` read it), without a docker daemon.

    python3 mkimages.py OUT.tar SPEC.json

SPEC.json: [{"ref": "registry.k8s.io/e2e-test-images/agnhost:2.56", "layers": ["base.tar", "agnhost.tar"],
             "entrypoint": ["/agnhost"], "cmd": ["pause"], "env": ["PATH=..."], "workdir": "/",
             "user": ""}, ...]
Each layer is a plain tar of a filesystem tree (later layers are laid over earlier ones). A layer shared
by several images is stored once in the archive and, having one digest, once in the runtime's store.
Stdlib only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tf.addfile(ti, io.BytesIO(data))


def build(out: str, specs: list[dict]) -> None:
    digests: dict[str, str] = {}
    for spec in specs:
        for layer in spec["layers"]:
            if layer not in digests:
                digests[layer] = _sha256_file(layer)
    manifest, configs = [], {}
    for spec in specs:
        cfg = {k: v for k, v in (("Entrypoint", spec.get("entrypoint")), ("Cmd", spec.get("cmd")),
                                  ("Env", spec.get("env") or [("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                                              "/sbin:/bin")]),
                                  ("WorkingDir", spec.get("workdir") or "/"), ("User", spec.get("user") or ""),
                                  ("ExposedPorts", spec.get("exposed"))) if v}
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digests[x]}" for x in spec["layers"]]},
            "history": [{"created_by": f"pycni integration/e2e/mkimages.py ({os.path.basename(x)})"}
                        for x in spec["layers"]],
        }, sort_keys=True).encode()
        name = hashlib.sha256(config).hexdigest() + ".json"
        configs[name] = config
        manifest.append({"Config": name, "RepoTags": [spec["ref"]],
                         "Layers": [f"{digests[x]}/layer.tar" for x in spec["layers"]]})
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for layer, digest in digests.items():
            tf.add(layer, arcname=f"{digest}/layer.tar")
        for name, config in configs.items():
            _add_bytes(tf, name, config)
        _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
    os.replace(tmp, out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[2]) as f:
        build(sys.argv[1], json.load(f))
