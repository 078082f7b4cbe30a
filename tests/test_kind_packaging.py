"""Fast checks of the kind packaging (integration/kind, .github/workflows/kind.yml); the cluster itself runs in
`make kind-e2e` (integration/kind/run-e2e.sh). Here: shell syntax, the manifests' structure, the docker wrapper
that replaces kind's --privileged (against a fake docker), and the image's entrypoint driven with a fake
bundle to prove the agent accepts the arguments it gets. No root, no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pycni.agent.main import parse_args

ROOT = Path(__file__).resolve().parent.parent
KIND = ROOT / "integration" / "kind"


def _yaml_docs(path: Path) -> list:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("script,shell", [("run-e2e.sh", "bash"), ("cluster.sh", "bash"), ("images.sh", "bash"),
                                          ("docker", "bash"), ("entrypoint.sh", "sh"), ("node-preinit.sh", "sh")])
def test_shell_syntax(script, shell):
    proc = subprocess.run([shell, "-n", str(KIND / script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(KIND / script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout


def test_daemonset_manifest():
    docs = {d["kind"]: d for d in _yaml_docs(KIND / "pycni-daemonset.yaml")}
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}
    assert docs["ServiceAccount"]["metadata"] == {"name": "pycni", "namespace": "kube-system"}
    assert docs["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]}]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "pycni"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pycni", "namespace": "kube-system"}]
    ds = docs["DaemonSet"]
    assert ds["metadata"]["namespace"] == "kube-system"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "pycni"
    assert {"operator": "Exists"} in pod["tolerations"]
    c, daemon, netpol = pod["containers"]
    # the daemon runs in the node's mount namespace (it serves only callers in its own namespaces,
    # docs/security.md): hostPID, and the node's installed pycni entered through /proc/1/ns/mnt
    assert pod["hostPID"] is True and daemon["securityContext"]["privileged"] is True
    assert daemon["args"][0] == "daemon"
    entry = (KIND / "entrypoint.sh").read_text()
    assert "exec nsenter --mount=/proc/1/ns/mnt -- /opt/cni/bin/pycni daemon" in entry
    assert "--cni-path /opt/cni/bin" in entry and "--socket /run/pycni/pycni.sock" in entry
    assert {m["mountPath"] for m in daemon["volumeMounts"]} == {"/opt/cni/bin", "/etc/cni/net.d"}
    assert netpol["command"] == ["/bundle/pycni", "netpol", "--kube"] and netpol["image"] == c["image"]
    assert netpol["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["CLUSTER_CIDR"]["value"] == "10.244.0.0/16"
    assert env["CRI_SOCKET"]["value"].startswith("/run/containerd/")
    assert c["securityContext"]["privileged"] is True
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert all(m["mountPath"] == vols[m["name"]] for m in daemon["volumeMounts"])  # the node's own paths
    assert {vols[n]: mounts[n] for n in mounts} == {"/opt/cni/bin": "/host/opt/cni/bin",
                                                    "/etc/cni/net.d": "/host/etc/cni/net.d",
                                                    "/var/lib/cni": "/var/lib/cni", "/run/pycni": "/run/pycni",
                                                    "/run/containerd": "/run/containerd"}
    # no unused volume
    assert set(vols) == set(mounts) | {m["name"] for m in daemon["volumeMounts"]}
    # metrics (README "Operating pycni"): on in the DaemonSet, on the documented port
    assert daemon["args"][daemon["args"].index("--metrics-address") + 1] == ":9472"
    assert daemon["ports"] == [{"name": "metrics", "containerPort": 9472, "protocol": "TCP"}]
    assert ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9472"
    assert c["image"] == "pycni/agent:dev" == daemon["image"]  # cluster.sh substitutes exactly this string
    assert "image: pycni/agent:dev" in (KIND / "pycni-daemonset.yaml").read_text()
    # readiness: the agent's last round succeeded; the daemon serves a request
    assert c["readinessProbe"]["exec"]["command"] == ["test", "-f", "/tmp/pycni-agent-ready"]
    probe = daemon["readinessProbe"]["exec"]["command"]  # node paths only: it runs in the node's mount namespace
    assert probe[0] == "/opt/cni/bin/pycni.d/bin/python3" and 'client.call("pycni"' in probe[-1]
    assert "--ready-file /tmp/pycni-agent-ready" in (KIND / "entrypoint.sh").read_text()
    # the daemon's drain fits in the termination grace period
    grace = {e["name"]: e["value"] for e in daemon["env"]}["DAEMON_GRACE"]
    assert pod["terminationGracePeriodSeconds"] >= int(grace) + 5


def test_kind_config():
    (cfg,) = _yaml_docs(KIND / "kind-config.yaml")
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["networking"] == {"disableDefaultCNI": True, "podSubnet": "10.244.0.0/16"}
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane", "worker", "worker"]


def test_workflow():
    (wf,) = _yaml_docs(ROOT / ".github" / "workflows" / "kind.yml")
    job = wf["jobs"]["e2e"]
    assert job["runs-on"] == "ubuntu-latest"
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("actions/checkout") for u in uses)
    assert any(u.startswith("actions/setup-go") for u in uses) and "sigs.k8s.io/kind" in runs
    assert "kubectl" in runs and "PYCNI_KIND_MODE=registry" in runs and "make kind-e2e" in runs


@pytest.fixture
def fake_docker(tmp_path):
    """A fake `docker` recording its argv and answering `image inspect` like a kind node image."""
    log = tmp_path / "calls"
    real = tmp_path / "real-docker"
    real.write_text(f"""#!/bin/sh
if [ "$1 $2" = "image inspect" ]; then
  case "$4" in *Entrypoint*) printf '/usr/local/bin/entrypoint\\n/sbin/init\\n';; esac
  exit 0
fi
printf '%s\\n' "$@" > {log}
""")
    real.chmod(0o755)
    return real, log


def _wrapper(fake_docker, *argv):
    real, log = fake_docker
    env = dict(os.environ, PYCNI_REAL_DOCKER=str(real))
    proc = subprocess.run(["bash", str(KIND / "docker"), *argv], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


def test_docker_wrapper_rewrites_kinds_privileged_run(fake_docker):
    got = _wrapper(fake_docker, "run", "--name", "n1", "--hostname", "n1", "--privileged", "--security-opt",
                   "seccomp=unconfined", "--tmpfs", "/run", "--volume", "/var", "--volume",
                   "/lib/modules:/lib/modules:ro", "--cgroupns=private", "kindest/node:x")
    assert "--privileged" not in got
    i = got.index("--cap-add")
    assert got[i:i + 6] == ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--device-cgroup-rule", "a *:* rwm"]
    assert got[:3] == ["run", "--name", "n1"] and "--cgroupns=private" in got and "/var" in got
    # the image's own entrypoint + cmd now follow the image, behind node-preinit.sh
    assert got[-3:] == ["kindest/node:x", "/usr/local/bin/entrypoint", "/sbin/init"]
    assert got[got.index("--entrypoint") + 1] == "/usr/local/sbin/pycni-node-preinit"
    assert f"{KIND / 'node-preinit.sh'}:/usr/local/sbin/pycni-node-preinit:ro" in got
    # /lib/modules is kept only when the host has it (dockerd would create it)
    assert ("/lib/modules:/lib/modules:ro" in got) == os.path.isdir("/lib/modules")


def test_docker_wrapper_passes_everything_else(fake_docker):
    assert _wrapper(fake_docker, "exec", "--privileged", "-i", "n1", "ctr", "images", "import", "-") == \
        ["exec", "-i", "n1", "ctr", "images", "import", "-"]
    argv = ["run", "--name", "x", "--privileged-not", "img", "sh"]
    assert _wrapper(fake_docker, *argv) == argv
    assert _wrapper(fake_docker, "ps", "-a", "--filter", "label=io.x-k8s.kind.cluster") == \
        ["ps", "-a", "--filter", "label=io.x-k8s.kind.cluster"]


@pytest.mark.parametrize("hook", [False, True])
def test_entrypoint_gives_the_agent_valid_arguments(tmp_path, hook):
    """entrypoint.sh with a fake bundle: without the CLI hook it falls back to `python3 -m pycni.agent`,
    with it it runs `pycni agent`; either way the arguments parse."""
    bundle = tmp_path / "bundle"
    (bundle / "pycni.d" / "bin").mkdir(parents=True)
    record = tmp_path / "argv.json"
    recorder = f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n"
    launcher = ("#!/bin/sh\nif [ \"$1\" = agent ] && [ \"$2\" = --help ]; then exit 0; fi\n" + recorder if hook
                else "#!/bin/sh\nexit 1\n")
    for path, text in ((bundle / "pycni", launcher), (bundle / "pycni.d" / "bin" / "python3", recorder)):
        path.write_text(text)
        path.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "BUNDLE_DIR": str(bundle), "NODE_NAME": "kind-worker",
           "CLUSTER_CIDR": "10.244.0.0/16", "AGENT_INTERVAL": "30"}
    proc = subprocess.run(["sh", str(KIND / "entrypoint.sh")], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    argv = record.read_text().splitlines()
    if hook:
        assert argv[0] == "agent"
        argv = argv[1:]
    else:
        assert argv[:3] == ["-I", "-m", "pycni.agent"]
        argv = argv[3:]
    args = parse_args(argv)
    assert args.kube and args.node_name == "kind-worker" and args.cluster_cidr == ["10.244.0.0/16"]
    assert args.cni_bin_dir == "/host/opt/cni/bin" and args.cni_conf_dir == "/host/etc/cni/net.d"
    assert args.bundle_dir == str(bundle) and args.interval == 30 and args.cni_version == "1.0.0"
    assert args.ready_file == "/tmp/pycni-agent-ready"
    # a missing NODE_NAME is an error, not an agent started without a node
    env.pop("NODE_NAME")
    proc = subprocess.run(["sh", str(KIND / "entrypoint.sh")], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "NODE_NAME" in proc.stderr


def test_checks_module_is_stdlib_only():
    """run-e2e.sh runs kl_kube.py with any python3: it and kl_checks import nothing outside the stdlib."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import kl_kube, kl_checks; "
            "bad = [m for m in ('docker', 'grpc', 'cri_api', 'pycni', 'pyroute2', 'pydantic') if m in sys.modules]; "
            "print(json.dumps(bad))")
    proc = subprocess.run(["python3", "-I", "-c", "import json; " + code, str(ROOT / "integration" / "kindlab")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_e2e_tells_the_static_shim_from_anything_else(native_shim):
    """e2e.py's native-shim check (the node's /opt/cni/bin/pycni must be the static shim) on real files:
    the shim of `make install`/`make bundle` passes, a dynamic executable and a script do not."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("pycni_kind_e2e", KIND / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(KIND))
    try:
        spec.loader.exec_module(e2e)
    finally:
        sys.path.remove(str(KIND))
    assert e2e.elf_is_static((native_shim / "pycni").read_bytes()[:4096])
    assert not e2e.elf_is_static(Path(sys.executable).resolve().read_bytes()[:4096])  # dynamically linked
    assert not e2e.elf_is_static(b"#!/bin/sh\nexec python3 -c pass\n")
