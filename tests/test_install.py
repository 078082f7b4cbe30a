"""`make install`: by default both executables are the static native shim, whose standalone fallback runs the
installation's own interpreter; NATIVE_SHIM=0 installs the Python launchers. Both give the same answers.

Each install is a fresh venv in a scratch PYCNI_HOME (pip installs the package from this checkout); no daemon
runs here, so every verb below goes through the fallback (tests/test_daemon.py covers the handoff).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bundle import _is_static_elf

ROOT = Path(__file__).resolve().parent.parent


def _install(dest: Path, *extra: str) -> Path:
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"CNI_BIN_DIR={dest / 'bin'}",
                           f"PYCNI_HOME={dest / 'home'}", f"PYTHON={sys._base_executable}", *extra],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"make install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return dest / "bin"


@pytest.fixture(scope="module")
def installs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("install")
    return {"shim": _install(base / "default"), "python": _install(base / "launchers", "NATIVE_SHIM=0")}


def run(bin_dir: Path, exe: str, command: str, stdin: bytes, tmp: Path, **env: str) -> tuple[int, str, str]:
    penv = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": "ctr-install",
            "CNI_NETNS": "/var/run/netns/pycnit-never-opened", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir),
            "PYCNI_SOCKET": str(tmp / "no-daemon.sock"), **env}
    proc = subprocess.run([str(bin_dir / exe)], input=stdin, env=penv, capture_output=True, timeout=120, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_make_install_installs_the_static_shim(installs):
    shim = installs["shim"] / "pycni"
    assert _is_static_elf(shim)
    assert shim.read_bytes() == (installs["shim"] / "pycni-host-local").read_bytes()
    ldd = subprocess.run(["ldd", str(shim)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    home_python = str(installs["shim"].parent / "home" / "bin" / "python").encode()
    assert home_python in shim.read_bytes()  # its fallback is this installation's interpreter


def test_native_shim_0_installs_the_python_launchers(installs):
    home = installs["python"].parent / "home"
    for exe, func in (("pycni", "main_bridge"), ("pycni-host-local", "main_host_local")):
        text = (installs["python"] / exe).read_text()
        assert text == f"#!{home}/bin/python -I\nfrom pycni.cli import {func}\n{func}()\n"
        assert os.access(installs["python"] / exe, os.X_OK)


def test_both_installs_give_the_same_answers(installs, tmp_path):
    """VERSION, a host-local ADD / CHECK / DEL in a scratch store, errors: byte for byte the same."""
    answers = {}
    for name, bin_dir in installs.items():
        data = tmp_path / name
        net = {"cniVersion": "1.0.0", "name": "installnet", "type": "pycni-host-local",
               "ipam": {"type": "pycni-host-local", "subnet": "10.98.0.0/24", "dataDir": str(data)}}
        conf = json.dumps(net).encode()
        out = {"VERSION": run(bin_dir, "pycni", "VERSION", b'{"cniVersion": "0.4.0"}', tmp_path)}
        add = run(bin_dir, "pycni-host-local", "ADD", conf, tmp_path)
        out["ADD"] = add
        out["CHECK"] = run(bin_dir, "pycni-host-local", "CHECK",
                           json.dumps(dict(net, prevResult=json.loads(add[1]))).encode(), tmp_path)
        out["leases"] = sorted(p.name for p in (data / "installnet").iterdir())
        out["DEL"] = run(bin_dir, "pycni-host-local", "DEL", conf, tmp_path)
        out["bad config"] = run(bin_dir, "pycni", "ADD", b'{"cniVersion": "1.0.0", "name": "x", "mtu": "1500"}',
                                tmp_path)[:2]
        out["not JSON"] = run(bin_dir, "pycni", "ADD", b"\xff", tmp_path)[:2]
        answers[name] = out
    assert answers["shim"] == answers["python"]
    got = answers["shim"]
    assert got["ADD"][0] == 0 and json.loads(got["ADD"][1])["ips"][0]["address"] == "10.98.0.2/24"
    assert got["leases"] == ["10.98.0.2", "last_reserved_ip.0", "lock"]
    assert got["DEL"][:2] == (0, "") and json.loads(got["not JSON"][1])["code"] == 6
