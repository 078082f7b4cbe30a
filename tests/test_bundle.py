"""The self-contained bundle (integration/bundle/build.sh) on a node without Python and without glibc.

The node is a busybox-static root filesystem (no python, no libc, no loader) entered with
`nsenter --net=<node netns> chroot <rootfs>`; the bundle is extracted into its /opt/cni/bin exactly as
documented (`tar -C /opt/cni/bin -xzf pycni-bundle.tar.gz`). host-local runs there without /proc; the
bridge plugin needs /proc (as on any real node), so its test mounts one, and bind-mounts the pod's
netns file so that CNI_NETNS resolves inside the chroot. Every mount, namespace and temp dir is
removed even on failure; the root namespace's links are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import IS_ROOT, in_ns

pytestmark = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root (chroot, netns, mounts)")]

BUSYBOX = Path("/bin/busybox")
SUPPORT = "pycni.d"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"


def _is_static_elf(path: Path) -> bool:
    """An ELF executable without a PT_INTERP program header (needs no loader, no libc)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


@pytest.fixture(scope="session")
def tarball(bundle_tarball) -> Path:
    return bundle_tarball


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def _umount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], check=False, capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def rootfs(tarball) -> Path:
    """A busybox-static node rootfs with the bundle in /opt/cni/bin: no python, no glibc."""
    if not _is_static_elf(BUSYBOX):
        pytest.skip("needs busybox-static (/bin/busybox statically linked; make deps installs it)")
    root = Path(tempfile.mkdtemp(prefix="pycni-bundle-root-"))
    try:
        for d in ("bin", "tmp", "proc", "opt/cni/bin", "var/lib/cni", "var/run/netns", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "tmp", 0o1777)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            link = root / "bin" / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
        subprocess.run(["tar", "-C", str(root / "opt/cni/bin"), "-xzf", str(tarball)], check=True)
        yield root
    finally:
        left = _mounts_under(root)
        for point in reversed(left):
            _umount(Path(point))
        if not _mounts_under(root):  # never rm -rf through a mount
            shutil.rmtree(root, ignore_errors=True)


def chroot_run(root: Path, exe: str, command: str | None, conf: dict | None = None, *, node: str | None = None,
               container_id: str | None = "ctr1", netns: str | None = None, ifname: str | None = "eth0",
               extra_env: dict | None = None, argv: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `exe` (a path inside the rootfs) as a runtime would, chrooted, optionally in a node netns."""
    env = {"PATH": "/bin"}
    if command:
        env["CNI_COMMAND"] = command
        for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                           ("CNI_PATH", "/opt/cni/bin")):
            if value is not None:
                env[key] = value
    env.update(extra_env or {})
    cmd = [CHROOT, str(root), exe, *(argv or [])]
    if node:
        cmd = [NSENTER, f"--net=/var/run/netns/{node}", "--", *cmd]
    data = json.dumps(conf).encode() if conf is not None else b""
    return subprocess.run(cmd, check=False, input=data, env=env, capture_output=True, timeout=60)


def _doc(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout={proc.stdout!r}\nstderr={proc.stderr.decode()}"
    return json.loads(proc.stdout)


# -- the node really has no Python and no glibc -----------------------------------------------------


def test_rootfs_has_no_python_and_no_glibc_outside_the_bundle(rootfs):
    bundle = rootfs / "opt/cni/bin" / SUPPORT
    offenders = []
    for path in rootfs.rglob("*"):
        name = path.name
        if name.startswith(("python", "libpython", "ld-linux", "libc.so", "libc-")) and bundle not in path.parents:
            offenders.append(str(path))
    assert offenders == []
    assert sorted(p.name for p in (rootfs / "opt/cni/bin").iterdir()) == ["pycni", "pycni-host-local", SUPPORT]
    assert _is_static_elf(rootfs / "bin/busybox") and (rootfs / "bin/sh").is_symlink()


def _buildinfo(d: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in (d / "BUILDINFO").read_text().splitlines() if " " in line)


def test_bundle_layout_and_buildinfo(rootfs):
    d = rootfs / "opt/cni/bin" / SUPPORT
    info = _buildinfo(d)
    ver = ".".join(info["python"].split()[0].split(".")[:2])  # "3.11.2 from /usr/bin/python3.11"
    site = info["site"]  # where the interpreter's own site.py looks (Debian: local/lib/python3.X/dist-packages)
    for rel in (f"bin/python{ver}", "bin/python3", "lib/ld-linux-x86-64.so.2", "lib/libc.so.6",
                f"lib/python{ver}/os.py", f"{site}/pycni/cli.py", "install.sh", "BUILDINFO"):
        assert (d / rel).exists(), rel
    for lib in info["libs"].split():  # the ldd closure (libpython too when the interpreter has a shared one)
        assert (d / "lib" / lib).is_file(), lib
    text = (d / "BUILDINFO").read_text()
    for dist in ("pydantic==", "pydantic_core==", "pyroute2==", "typing_extensions==", "annotated-types==",
                 "prometheus_client=="):
        assert dist in text
    # every module precompiled: unchecked-hash .pyc (flags word == 0b01), never rewritten on the node
    pyc = d / site / f"pycni/__pycache__/cli.cpython-{ver.replace('.', '')}.pyc"
    flags, = struct.unpack_from("<I", pyc.read_bytes(), 4)
    assert flags == 1
    assert not list((d / f"lib/python{ver}").glob("test/**")), "stdlib tests should be trimmed"


def test_bundle_is_built_from_the_expected_interpreter(bundle_dir):
    """CI builds one bundle from Debian's own /usr/bin/python3 (static libpython, dist-packages) and runs
    these tests on it (PYCNI_BUNDLE, PYCNI_BUNDLE_PYTHON); otherwise the bundle is the test venv's."""
    expected = os.environ.get("PYCNI_BUNDLE_PYTHON") if os.environ.get("PYCNI_BUNDLE") else sys._base_executable
    assert expected, "PYCNI_BUNDLE is set: say which interpreter built it in PYCNI_BUNDLE_PYTHON"
    info = _buildinfo(bundle_dir / SUPPORT)
    assert info["python"].split(" from ", 1)[1] == os.path.realpath(expected), info["python"]


# -- VERSION and launcher resolution -----------------------------------------------------------------


def test_version_in_chroot_ignores_python_env(rootfs):
    hostile = {"PYTHONHOME": "/nowhere", "PYTHONPATH": "/nowhere", "PYTHONSTARTUP": "/nowhere",
               "PYTHONWARNINGS": "error", "LD_LIBRARY_PATH": "/nowhere"}
    for exe in ("pycni", "pycni-host-local"):
        proc = chroot_run(rootfs, f"/opt/cni/bin/{exe}", "VERSION", {"cniVersion": "0.4.0"}, extra_env=hostile)
        doc = _doc(proc)
        assert doc["cniVersion"] == "0.4.0" and "1.1.0" in doc["supportedVersions"]
        assert proc.stderr == b""


def test_the_plugins_are_the_static_native_shim(bundle_dir):
    """Both executables are the native shim (src/pycni/daemon/shim.c), statically linked: it runs on a
    node with any libc or none (this rootfs), and finds the bundled interpreter for its fallback."""
    shim = bundle_dir / "pycni"
    assert _is_static_elf(shim), "the bundle's pycni is not a static ELF executable"
    assert shim.read_bytes() == (bundle_dir / "pycni-host-local").read_bytes()
    ldd = subprocess.run(["ldd", str(shim)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    assert _buildinfo(bundle_dir / SUPPORT)["launchers"] == "native shim (static)"


def test_launcher_resolves_relative_and_symlinked_paths(rootfs):
    """$0 relative, via PATH, via a relative symlink to a symlink, without /proc: the shim finds pycni.d
    next to its real self (and the bundled interpreter finds its prefix)."""
    assert not os.path.ismount(rootfs / "proc")
    script = (
        "set -e; mkdir -p /usr/local/bin; "
        "ln -sf ../../../opt/cni/bin/pycni-host-local /usr/local/bin/hl; ln -sf /usr/local/bin/hl /hl2; "
        "cd /opt/cni; echo '{}' | ./bin/pycni-host-local; "
        "cd /; echo '{}' | ./hl2; cd /usr/local/bin; echo '{}' | hl; "
        "/opt/cni/bin/pycni.d/bin/python3 -c 'import sys; print(sys.executable, sys.prefix)'"
    )
    proc = chroot_run(rootfs, "/bin/sh", "VERSION", argv=["-c", script],
                      extra_env={"PATH": "/usr/local/bin:/bin"})
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 4
    assert all(json.loads(line)["cniVersion"] == "1.1.0" for line in lines[:3])
    assert lines[3] == "/opt/cni/bin/pycni.d/bin/python3 /opt/cni/bin/pycni.d"


def test_install_script_with_busybox(rootfs):
    """pycni.d/install.sh (busybox sh, cp, mv) installs and then upgrades in place into another bin dir."""
    dest = rootfs / "opt/cni/bin2"
    try:
        for _ in range(2):  # fresh install, then an upgrade over it
            proc = chroot_run(rootfs, "/opt/cni/bin/pycni.d/install.sh", None, argv=["/opt/cni/bin2"])
            assert proc.returncode == 0, proc.stderr.decode()
        assert sorted(p.name for p in dest.iterdir()) == ["pycni", "pycni-host-local", SUPPORT]
        doc = _doc(chroot_run(rootfs, "/opt/cni/bin2/pycni-host-local", "VERSION", {"cniVersion": "1.1.0"}))
        assert doc["cniVersion"] == "1.1.0"
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_bundle_on_host_uses_only_its_own_libraries(bundle_dir):
    """Run outside any chroot, with a hostile LD_LIBRARY_PATH: no library of the host gets mapped."""
    code = ("import pyroute2, pydantic, ctypes, ssl, sqlite3, hashlib, lzma, bz2, uuid, decimal, pycni.cli\n"
            "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if '.so' in l})))")
    proc = subprocess.run([str(bundle_dir / SUPPORT / "bin/python3"), "-I", "-c", code], check=False,
                          capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/lib/x86_64-linux-gnu",
                                          "PYTHONHOME": "/nowhere"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mapped = proc.stdout.split()
    assert mapped and all(str(bundle_dir / SUPPORT) in m for m in mapped), mapped


# -- host-local for real, in a node namespace -----------------------------------------------------------


def test_host_local_add_check_del(rootfs, node):
    net = f"bundle-{uuid.uuid4().hex[:6]}"
    conf = {"cniVersion": "1.1.0", "name": net, "type": "pycni-host-local",
            "ipam": {"type": "pycni-host-local", "subnet": "10.66.0.0/24", "dataDir": "/var/lib/cni/networks"}}
    store = rootfs / "var/lib/cni/networks" / net
    hl = "/opt/cni/bin/pycni-host-local"
    ns = "/var/run/netns/pod-that-ipam-never-opens"
    try:
        result = _doc(chroot_run(rootfs, hl, "ADD", conf, node=node, netns=ns))
        assert result["ips"] == [{"address": "10.66.0.2/24", "gateway": "10.66.0.1"}]
        lease = store / "10.66.0.2"
        assert lease.read_bytes() == b"ctr1\r\neth0"
        check_conf = dict(conf, prevResult=result)
        proc = chroot_run(rootfs, hl, "CHECK", check_conf, node=node, netns=ns)
        assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode()
        proc = chroot_run(rootfs, hl, "DEL", conf, node=node, netns=ns)
        assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode()
        assert not lease.exists()
        # CHECK after DEL: a spec error document (code 105 CHECK mismatch), still from the bundle
        proc = chroot_run(rootfs, hl, "CHECK", check_conf, node=node, netns=ns)
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 105
    finally:
        shutil.rmtree(store, ignore_errors=True)


# -- the bridge plugin for real: node netns + pod netns, chrooted --------------------------------------------


def _bridge_conf(data_dir: str, subnet: str = "10.67.0.0/24") -> dict:
    return {"cniVersion": "1.1.0", "name": "bundlenet", "type": "pycni", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "pycni-host-local", "subnet": subnet, "dataDir": data_dir}}


def _venv_bridge_works(netns, tmp_path) -> str:
    """'' if the venv's bridge plugin does ADD+DEL here (so a bundle failure is the bundle's), else why not."""
    exe = Path(sys.executable).parent / "pycni"
    node, pod = netns.create("pycnit-bnode"), netns.create("pycnit-bpod")
    conf = _bridge_conf(str(tmp_path / "venv-ipam"))
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": "probe", "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(exe.parent)}
    argv = [NSENTER, f"--net=/var/run/netns/{node}", "--", str(exe)]
    add = subprocess.run(argv, check=False, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
    env["CNI_COMMAND"] = "DEL"
    subprocess.run(argv, check=False, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
    if add.returncode != 0:
        return f"venv bridge ADD fails too: {add.stdout.decode()[:300]} {add.stderr.decode()[-300:]}"
    return ""


def test_bridge_add_check_del_in_chroot(rootfs, netns, tmp_path):
    # A broken plugin is a failure, never a skip; the probe only says whether the bundle is to blame.
    why = _venv_bridge_works(netns, tmp_path)
    assert not why, f"the bridge plugin fails outside the bundle too: {why}"
    node, pod = netns.create("pycnit-node"), netns.create("pycnit-pod")
    pod_path = f"/var/run/netns/{pod}"
    ns_file, proc_dir = rootfs / pod_path.lstrip("/"), rootfs / "proc"
    data_dir = "/var/lib/cni/bridge-ipam"
    conf = _bridge_conf(data_dir)
    mounted: list[Path] = []
    try:
        ns_file.touch()
        subprocess.run(["mount", "--bind", pod_path, str(ns_file)], check=True)
        mounted.append(ns_file)
        subprocess.run(["mount", "-t", "proc", "proc", str(proc_dir)], check=True)
        mounted.append(proc_dir)

        def run(cmd: str, c: dict) -> subprocess.CompletedProcess:
            return chroot_run(rootfs, "/opt/cni/bin/pycni", cmd, c, node=node, container_id="ctr-b",
                              netns=pod_path)

        result = _doc(run("ADD", conf))
        assert [ip["address"] for ip in result["ips"]] == ["10.67.0.2/24"]
        assert "10.67.0.2/24" in in_ns(pod, "ip", "-o", "addr", "show", "dev", "eth0").stdout
        assert "10.67.0.1/24" in in_ns(node, "ip", "-o", "addr", "show", "dev", "cni0").stdout
        lease = rootfs / data_dir.lstrip("/") / "bundlenet" / "10.67.0.2"
        assert lease.exists()
        proc = run("CHECK", dict(conf, prevResult=result))
        assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode() + proc.stdout.decode()
        proc = run("DEL", dict(conf, prevResult=result))
        assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode() + proc.stdout.decode()
        # nothing left: no eth0 in the pod, no veth on the node, no lease
        assert in_ns(pod, "ip", "link", "show", "eth0", check=False).returncode != 0
        assert in_ns(node, "ip", "-o", "link", "show", "type", "veth").stdout.strip() == ""
        assert not lease.exists()
    finally:
        for target in reversed(mounted):
            _umount(target)
        ns_file.unlink(missing_ok=True)


def test_inspection_commands_run_from_the_bundle(rootfs, node):
    """`pycni leases` / `pycni status` on a node without Python (README "Operating pycni")."""
    doc = _doc(chroot_run(rootfs, "/opt/cni/bin/pycni", None, node=node,
                          argv=["leases", "--data-dir", "/nonexistent", "--json"]))
    assert doc == {"leases": []}
    proc = chroot_run(rootfs, "/opt/cni/bin/pycni", None, node=node,
                      argv=["status", "--conf-dir", "/nonexistent", "--socket", "/nonexistent.sock", "--json"])
    assert proc.returncode == 1, proc.stderr  # no daemon: reported as a problem
    doc = json.loads(proc.stdout)
    assert doc["daemon"]["running"] is False and doc["networks"] == []
