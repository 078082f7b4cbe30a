"""Shared test helpers.

`exec_plugin` runs an installed plugin executable the way a runtime does (env + stdin, one
subprocess) and parses its single stdout document. `netns` creates network namespaces that are
always deleted afterwards; root tests run every plugin inside a dedicated "node" namespace so
nothing can reach the machine's real interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
# Debian's containernetworking-plugins 1.1.1: the default source of helper plugins (loopback, a
# delegated host-local) for tests that do not compare against a reference.
REFERENCE_DIR = Path("/usr/lib/cni")
IS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Reference:
    """One release of the reference plugins (github.com/containernetworking/plugins)."""

    name: str
    dir: Path
    version: tuple[int, ...]

    def exe(self, plugin: str) -> str:
        return str(self.dir / plugin)

    @property
    def cni_1_1(self) -> bool:
        """Speaks CNI 1.1.0 (STATUS, GC; host-local implements GC): v1.5 and newer."""
        return self.version >= (1, 5)

    def __str__(self) -> str:
        return f"{self.name} {'.'.join(map(str, self.version))}"


def _debian_reference() -> Reference:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"],
                          capture_output=True, text=True, check=False)
    digits = proc.stdout.split("+")[0].split("-")[0].split(".") if proc.returncode == 0 else ["0"]
    return Reference("debian", REFERENCE_DIR, tuple(int(d) for d in digits if d.isdigit()))


def _upstream_reference() -> Reference:
    """build/ref: the release pinned in integration/cni/go.mod, built by `make build`."""
    ref = REPO / "build" / "ref"
    version = (ref / "VERSION").read_text().strip().lstrip("v") if (ref / "VERSION").exists() else "0"
    return Reference("upstream", ref, tuple(int(d) for d in version.split(".")))


REFERENCES = {"debian": _debian_reference, "upstream": _upstream_reference}


@pytest.fixture(scope="session", params=sorted(REFERENCES))
def reference(request) -> Reference:
    """Every differential and interop test runs against both references: Debian's 1.1.1 and the
    current release built into build/ref (a missing build is a failure, not a skip)."""
    ref = REFERENCES[request.param]()
    if not (ref.dir / "host-local").exists():
        if request.param == "upstream":
            pytest.fail(f"{ref.dir} is missing: run `make build` (integration/cni/build.sh)")
        pytest.skip(f"Debian's reference plugins are not installed ({ref.dir})")
    return ref


def pytest_collection_modifyitems(config, items) -> None:
    """`make test-unit` runs `-m "not root"`: a test that skips without root is a root test, whether or
    not its module remembered the mark."""
    for item in items:
        if item.get_closest_marker("root") is None and any(
                "root" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.root)


def plugin_exe(name: str) -> str:
    """Our executables come from the venv that runs the tests; reference plugins from Debian (or the
    path given)."""
    if os.path.isabs(name):
        return name
    ours = VENV_BIN / name
    if ours.exists():
        return str(ours)
    return str(REFERENCE_DIR / name)


@dataclass
class PluginRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)

    @property
    def documents(self) -> int:
        """How many JSON documents stdout holds (the protocol allows exactly one, or none)."""
        text, count, dec = self.stdout.strip(), 0, json.JSONDecoder()
        while text:
            _, end = dec.raw_decode(text)
            text = text[end:].strip()
            count += 1
        return count


def exec_plugin(
    name: str,
    command: str,
    conf: dict | bytes | str | None,
    *,
    container_id: str | None = "ctr1",
    netns: str | None = None,
    ifname: str | None = "eth0",
    args: str | None = None,
    path: str | None = None,
    node: str | None = None,
    extra_env: dict | None = None,
    timeout: float = 60,
) -> PluginRun:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command}
    for key, value in (
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
        ("CNI_PATH", path if path is not None else f"{VENV_BIN}:{REFERENCE_DIR}"),
    ):
        if value is not None:
            env[key] = value
    env.update(extra_env or {})
    if isinstance(conf, dict):
        data = json.dumps(conf).encode()
    elif isinstance(conf, str):
        data = conf.encode()
    else:
        data = conf or b""
    argv = [plugin_exe(name)]
    if node:
        argv = ["nsenter", f"--net=/var/run/netns/{node}", "--"] + argv
    proc = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=timeout, check=False)
    return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


class Namespaces:
    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, prefix: str = "pycnit") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.created.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    @staticmethod
    def path(name: str) -> str:
        return f"/var/run/netns/{name}"

    def cleanup(self) -> None:
        for name in reversed(self.created):
            # deleting the namespace deletes every link inside it (bridges, veth ends)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.created.clear()


@pytest.fixture
def netns():
    if not IS_ROOT or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture
def node(netns) -> str:
    """A dedicated node namespace: plugins run here, never in the machine's own namespace."""
    return netns.create("pycnit-node")


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "--", *cmd], capture_output=True, text=True,
                          check=check)


# -- the bundle (integration/bundle/build.sh) -----------------------------------------------------------


def _bundle_sources() -> list[Path]:
    return [REPO / "integration" / "bundle" / "build.sh", REPO / "integration" / "shim" / "build.sh",
            REPO / "pyproject.toml", REPO / "src" / "pycni" / "daemon" / "shim.c", *(REPO / "src" / "pycni").rglob("*.py")]


@pytest.fixture(scope="session")
def bundle_tarball() -> Path:
    """The bundle the bundle and agent tests install. $PYCNI_BUNDLE when set, used as it is (CI sets it
    to a bundle built from Debian's /usr/bin/python3); else build/pycni-bundle.tar.gz, (re)built from
    the venv running the tests when it is missing or older than the sources it contains."""
    given = os.environ.get("PYCNI_BUNDLE")
    if given:
        path = Path(given)
        assert path.is_file(), f"PYCNI_BUNDLE={given} does not exist"
        return path
    tarball = REPO / "build" / "pycni-bundle.tar.gz"
    newest = max(p.stat().st_mtime for p in _bundle_sources() if p.exists())
    if not tarball.exists() or tarball.stat().st_mtime < newest:
        env = dict(os.environ, VENV=sys.prefix, OUT=str(REPO / "build"))
        proc = subprocess.run(["bash", str(REPO / "integration" / "bundle" / "build.sh")], check=False, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"bundle build failed:\n{proc.stdout}\n{proc.stderr}"
    return tarball


@pytest.fixture(scope="session")
def native_shim(tmp_path_factory) -> Path:
    """The native shim (src/pycni/daemon/shim.c) built by integration/shim/build.sh for the venv running the
    tests (its standalone fallback execs this interpreter), as `pycni` and `pycni-host-local`."""
    out = tmp_path_factory.mktemp("native")
    proc = subprocess.run(["bash", str(REPO / "integration" / "shim" / "build.sh"), str(out / "pycni"), sys.executable],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"building the shim failed (gcc and libc6-dev: make deps):\n{proc.stderr}"
    (out / "pycni-host-local").symlink_to("pycni")
    return out


@pytest.fixture(scope="session")
def bundle_dir(bundle_tarball, tmp_path_factory) -> Path:
    """The bundle extracted: pycni, pycni-host-local and pycni.d/ (as `tar -C /opt/cni/bin -xzf` gives)."""
    out = tmp_path_factory.mktemp("bundle")
    subprocess.run(["tar", "-C", str(out), "-xzf", str(bundle_tarball)], check=True)
    return out


def service_account_dir(tmp: Path) -> tuple[Path, Path]:
    """A pod's service-account directory for talking to tests/agent_fake_api.py: `tmp/sa` with a self-signed
    `ca.crt` for 127.0.0.1 and a bearer `token`; returns (that directory, the server's key `tmp/k.pem`)."""
    sa, key = tmp / "sa", tmp / "k.pem"
    sa.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(sa / "ca.crt"), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    (sa / "token").write_text("sa-token")
    return sa, key
