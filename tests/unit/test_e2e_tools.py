"""integration/e2e without a cluster: the scripts parse, mkimages.py writes a docker-archive whose digests and
shared layers are right, junit_table.py keeps exactly the selected tests (and failed suite nodes)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "integration" / "e2e"


@pytest.mark.parametrize("script", ["build.sh", "run.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(E2E / script)], check=True)


def _layer(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp / name
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    out = tmp / f"{name}.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(out), "."], check=True)
    return out


def test_mkimages_docker_archive(tmp_path):
    base = _layer(tmp_path, "base", {"bin/sh": b"#!fake\n", "etc/passwd": b"root:x:0:0::/:/bin/sh\n"})
    top = _layer(tmp_path, "top", {"agnhost": b"\x7fELF"})
    spec = [{"ref": "registry.k8s.io/e2e-test-images/agnhost:2.56", "layers": [str(base), str(top)],
             "entrypoint": ["/agnhost"], "cmd": ["pause"]},
            {"ref": "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7", "layers": [str(base)], "cmd": ["/bin/sh"]}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "images.tar"
    subprocess.run([sys.executable, str(E2E / "mkimages.py"), str(out), str(tmp_path / "spec.json")], check=True)
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        members = tf.getnames()
        assert [m["RepoTags"] for m in manifest] == [[spec[0]["ref"]], [spec[1]["ref"]]]
        digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, top)}
        assert manifest[0]["Layers"] == [f"{digest[base]}/layer.tar", f"{digest[top]}/layer.tar"]
        assert manifest[1]["Layers"] == [f"{digest[base]}/layer.tar"]            # shared, stored once
        assert members.count(f"{digest[base]}/layer.tar") == 1
        for m, s in zip(manifest, spec, strict=True):
            raw = tf.extractfile(m["Config"]).read()
            assert m["Config"] == hashlib.sha256(raw).hexdigest() + ".json"
            config = json.loads(raw)
            assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(Path(x).read_bytes()).hexdigest()}"
                                                    for x in s["layers"]]
            assert config["config"].get("Entrypoint") == s.get("entrypoint") and config["config"]["Cmd"] == s["cmd"]
            assert tf.extractfile(f"{digest[base]}/layer.tar").read() == base.read_bytes()


def test_junit_table(tmp_path):
    xml = """<testsuites><testsuite>
<testcase name="[SynchronizedBeforeSuite]" time="1"/>
<testcase name="[It] [sig-network] Netpol a policy test [Feature:NetworkPolicy]" time="42"/>
<testcase name="[It] [sig-network] Netpol SCTP test [Feature:SCTPConnectivity]" time="0"><skipped message="skipped"/></testcase>
<testcase name="[It] [sig-network] Services x [Conformance]" time="3"><failure message="">[FAILED] boom
more</failure></testcase>
<testcase name="[It] [sig-storage] unrelated" time="0"><skipped message="skipped"/></testcase>
<testcase name="[SynchronizedAfterSuite]" time="0"><failure message="[PANICKED] Test Panicked"/></testcase>
</testsuite></testsuites>"""
    (tmp_path / "junit_01.xml").write_text(xml)
    out = subprocess.run([sys.executable, str(E2E / "junit_table.py"), r"\[sig-network\] Netpol|\[Conformance\]",
                          r"\[Feature:SCTPConnectivity\]", str(tmp_path / "junit_01.xml")],
                         capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| [")]
    assert out.startswith("3 tests: 1 passed, 2 failed, 0 skipped")
    assert rows == ["| [It] [sig-network] Netpol a policy test [Feature:NetworkPolicy] | passed | 42 |  |",
                    "| [It] [sig-network] Services x [Conformance] | FAILED | 3 | [FAILED] boom |",
                    "| [SynchronizedAfterSuite] | FAILED | 0 | [PANICKED] Test Panicked |"]
