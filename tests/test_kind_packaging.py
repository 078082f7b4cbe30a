"""Static checks of the kind packaging (integration/kind, .github/workflows/kind.yml) - kind itself cannot
run here (no image can be pulled), so: shell syntax, YAML structure, the Dockerfile's context, and the
agent image's entrypoint driven with a fake bundle to prove the agent accepts the arguments it gets.
No root, no network."""

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


@pytest.mark.parametrize("script,shell", [("run-e2e.sh", "bash"), ("entrypoint.sh", "sh")])
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
    assert docs["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"],
                                             "verbs": ["get", "list", "watch"]}]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "pycni"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pycni", "namespace": "kube-system"}]
    ds = docs["DaemonSet"]
    assert ds["metadata"]["namespace"] == "kube-system"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "pycni"
    assert {"operator": "Exists"} in pod["tolerations"]
    c, daemon = pod["containers"]
    assert daemon["command"][:2] == ["/bundle/pycni", "daemon"] and pod["hostPID"] is True
    dmounts = {m["mountPath"] for m in daemon["volumeMounts"]}
    assert {"/run/pycni", "/var/run/netns", "/var/lib/cni", "/opt/cni/bin"} <= dmounts
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["CLUSTER_CIDR"]["value"] == "10.244.0.0/16"
    assert c["securityContext"]["privileged"] is True
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert all(m["mountPath"] == vols[m["name"]] for m in daemon["volumeMounts"])  # the node's own paths
    assert {vols[n]: mounts[n] for n in mounts} == {"/opt/cni/bin": "/host/opt/cni/bin",
                                                    "/etc/cni/net.d": "/host/etc/cni/net.d",
                                                    "/run/pycni": "/run/pycni"}  # agent.json for `pycni status`
    # metrics (README "Operating pycni"): on in the DaemonSet, on the documented port
    assert daemon["command"][daemon["command"].index("--metrics-address") + 1] == ":9472"
    assert daemon["ports"] == [{"name": "metrics", "containerPort": 9472, "protocol": "TCP"}]
    assert ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9472"
    assert "/etc/cni/net.d" in dmounts  # the pools the metrics report
    assert c["image"] == "pycni/agent:dev"  # run-e2e.sh substitutes exactly this string
    assert "image: pycni/agent:dev" in (KIND / "pycni-daemonset.yaml").read_text()


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
    assert "kubectl" in runs and "make bundle" in runs and "integration/kind/run-e2e.sh" in runs


def test_dockerfile_context():
    text = (KIND / "Dockerfile").read_text()
    copies = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies == ["bundle/", "entrypoint.sh"]  # run-e2e.sh puts exactly these in the context
    assert 'ENTRYPOINT ["/entrypoint.sh"]' in text
    e2e = (KIND / "run-e2e.sh").read_text()
    assert 'cp "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$CTX/"' in e2e and 'tar -C "$CTX/bundle"' in e2e


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
