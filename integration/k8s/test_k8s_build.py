"""What integration/k8s/build.sh makes, checked by running it (marker `k8sbuild`, needs root).

Runs `build.sh all` (a no-op when the cache under /var/cache/pycni is warm; the full cold build otherwise, about an
hour on 2 cores: see README.md), against a dockerd of its own (dockerd.sh, instance `k8stest-<id>`, in its own
network namespace, purged at the end). Then:
* a second `build.sh bins` rebuilds nothing;
* the binaries say their pinned versions (`kubelet --version` = Kubernetes v1.34.4, ...);
* each control-plane image runs its binary (`--version`) with no network, kube-proxy's image has working
  iptables (the wrapper picks a mode), ip6tables, nft, conntrack and ipset;
* the kind node image boots systemd as PID 1 (flags of docs/kubernetes-facts.md: no --privileged), reaches
  `systemctl is-system-running` = running or degraded with containerd active, and its CRI lists every
  preloaded image.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
VERSIONS = dict(re.findall(r"^(\w+)=(\S+)", (HERE / "versions.env").read_text(), re.MULTILINE))
VERSIONS.update(ETCD_NUM=VERSIONS["ETCD_VERSION"].lstrip("v"), COREDNS_NUM=VERSIONS["COREDNS_VERSION"].lstrip("v"))
CACHE = Path(os.environ.get("PYCNI_CACHE", "/var/cache/pycni"))

pytestmark = [pytest.mark.k8sbuild]


def run(*cmd: str, env: dict | None = None, timeout: float = 600, check: bool = True) -> str:
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def docker_env():
    if os.geteuid() != 0:
        pytest.skip("needs root (dockerd, debootstrap)")
    name = f"k8stest-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, PYCNI_DOCKER_NAME=name)
    out = run("bash", str(HERE.parent / "harness" / "dockerd.sh"), "start", env=env)
    env["DOCKER_HOST"] = re.search(r"DOCKER_HOST=(\S+)", out).group(1)
    try:
        run("bash", str(HERE / "build.sh"), "all", env=env, timeout=7200)
        yield env
    finally:
        run("bash", str(HERE.parent / "harness" / "dockerd.sh"), "purge", env=env, check=False)


def docker(env: dict, *args: str, timeout: float = 120, check: bool = True) -> str:
    return run("docker", *args, env=env, timeout=timeout, check=check)


def test_second_run_rebuilds_nothing(docker_env):
    out = run("bash", str(HERE / "build.sh"), "bins", env=docker_env)
    for piece in ("kubernetes", "etcd", "coredns", "pause", "kind", "crictl", "local-path-provisioner"):
        assert f"{piece}: cached in" in out, out
    assert "building" not in out, out


@pytest.mark.parametrize("binary,args,want", [
    ("k8s/{K8S_VERSION}/bin/kubelet", ["--version"], "Kubernetes {K8S_VERSION}"),
    ("k8s/{K8S_VERSION}/bin/kubeadm", ["version", "-o", "short"], "{K8S_VERSION}"),
    ("k8s/{K8S_VERSION}/bin/kubectl", ["version", "--client"], "Client Version: {K8S_VERSION}"),
    ("etcd/{ETCD_VERSION}/bin/etcd", ["--version"], "etcd Version: {ETCD_NUM}"),
    ("coredns/{COREDNS_VERSION}/bin/coredns", ["-version"], "CoreDNS-{COREDNS_NUM}"),
    ("kind/{KIND_VERSION}/bin/kind", ["version"], "kind {KIND_VERSION} "),
    ("cri-tools/{CRICTL_VERSION}/bin/crictl", ["--version"], "crictl version {CRICTL_VERSION}"),
])
def test_binary_versions(docker_env, binary, args, want):
    out = run(str(CACHE / binary.format(**VERSIONS)), *args)
    assert want.format(**VERSIONS) in out, out


def image_version_cases():
    v = VERSIONS
    k = v["K8S_VERSION"]
    return [
        (f"registry.k8s.io/kube-apiserver:{k}", [], ["--version"], f"Kubernetes {k}"),
        (f"registry.k8s.io/kube-controller-manager:{k}", [], ["--version"], f"Kubernetes {k}"),
        (f"registry.k8s.io/kube-scheduler:{k}", [], ["--version"], f"Kubernetes {k}"),
        (f"registry.k8s.io/kube-proxy:{k}", [], ["--version"], f"Kubernetes {k}"),
        # kubeadm's manifests call these by name: they must be on the image's PATH
        (f"registry.k8s.io/kube-apiserver:{k}", ["--entrypoint", "kube-apiserver"], ["--version"], k),
        (f"registry.k8s.io/etcd:{v['ETCD_IMAGE_TAG']}", ["--entrypoint", "etcd"], ["--version"],
         f"etcd Version: {v['ETCD_VERSION'][1:]}"),
        (f"registry.k8s.io/etcd:{v['ETCD_IMAGE_TAG']}", ["--entrypoint", "etcdctl"], ["version"],
         f"etcdctl version: {v['ETCD_VERSION'][1:]}"),
        (f"registry.k8s.io/coredns/coredns:{v['COREDNS_VERSION']}", [], ["-version"],
         f"CoreDNS-{v['COREDNS_VERSION'][1:]}"),
        (f"registry.k8s.io/pause:{v['PAUSE_VERSION']}", [], ["--version"], f"pause {v['PAUSE_VERSION']}"),
        ("docker.io/kindest/local-path-provisioner:v20250214-acbabc1a", [], ["--version"],
         v["LPP_VERSION"]),
        ("docker.io/kindest/local-path-helper:v20241212-8ac705d0", ["--entrypoint", "sh"],
         ["-c", "mkdir -m 0777 -p /tmp/v/a && rm -rf /tmp/v && echo helper-ok"], "helper-ok"),
    ]


@pytest.mark.parametrize("ref,opts,args,want", image_version_cases())
def test_image_runs_its_binary(docker_env, ref, opts, args, want):
    out = docker(docker_env, "run", "--rm", "--network", "none", *opts, ref, *args)
    assert want in out, out


def test_kube_proxy_image_has_its_netfilter_tools(docker_env):
    ref = f"registry.k8s.io/kube-proxy:{VERSIONS['K8S_VERSION']}"
    script = ("iptables --version && iptables-save >/dev/null && ip6tables --version && nft --version "
              "&& conntrack --version && ipset --version && for m in nft legacy; do "
              "[ /usr/sbin/iptables -ef /usr/sbin/xtables-$m-multi ] && echo relinked-$m; done; true")
    # NET_ADMIN in a namespace of its own (--network none): the wrapper reads the (empty) rule sets to pick a mode
    out = docker(docker_env, "run", "--rm", "--network", "none", "--cap-add", "NET_ADMIN", "--entrypoint", "sh",
                 ref, "-c", script)
    assert re.search(r"iptables v1\.8\.\d+ \((nf_tables|legacy)\)", out), out
    assert "nftables v" in out and "conntrack v" in out and "ipset v" in out, out
    assert re.search(r"relinked-(nft|legacy)", out), out  # the wrapper replaced itself


NODE_FLAGS = ["--cgroupns", "private", "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--device-cgroup-rule", "a *:* rwm",
              "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
              "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp", "-e", "container=docker",
              "--volume", "/var"]
# kind's --cgroupns=private and what --privileged would do that these flags do not (cgroup mounts read-write:
# docs/kubernetes-facts.md), then kind's own entrypoint
PREINIT = ("mount -o remount,rw /sys/fs/cgroup; for m in $(awk '$3==\"cgroup\"{print $2}' /proc/self/mounts); do "
           "mount -o remount,rw $m 2>/dev/null || mount -o remount,bind,rw $m; done; "
           "exec /usr/local/bin/entrypoint /sbin/init")


def test_node_image_boots_with_containerd_and_preloaded_images(docker_env):
    name = f"k8stest-node-{uuid.uuid4().hex[:6]}"
    # a user network like kind's "kind" network (inside the dockerd's own namespace: nothing leaves it)
    docker(docker_env, "network", "create", name)
    docker(docker_env, "run", "-d", "--name", name, "--hostname", name, "--network", name, *NODE_FLAGS,
           "--entrypoint", "sh", VERSIONS["NODE_IMAGE"], "-c", PREINIT)
    try:
        state = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = docker(docker_env, "exec", name, "systemctl", "is-system-running", check=False).strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        assert state in ("running", "degraded"), docker(docker_env, "logs", name, check=False)[-3000:]
        assert docker(docker_env, "exec", name, "cat", "/proc/1/comm").strip() == "systemd"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            active = docker(docker_env, "exec", name, "systemctl", "is-active", "containerd", check=False).strip()
            if active == "active":
                break
            time.sleep(1)
        assert active == "active", docker(docker_env, "exec", name, "journalctl", "-u", "containerd", check=False)
        want = set(run("bash", "-c", f"cd {HERE} && source versions.env && HERE={HERE} CACHE={CACHE} "
                                     f"&& source images.sh && node_images").split())
        assert len(want) == 9, want
        ctr = set(docker(docker_env, "exec", name, "ctr", "-n", "k8s.io", "images", "ls", "-q").split())
        assert want <= ctr, want - ctr
        crictl = docker(docker_env, "exec", name, "crictl", "images")
        for ref in want:
            repo, tag = ref.rsplit(":", 1)
            assert re.search(rf"^{re.escape(repo)}\s+{re.escape(tag)}\s", crictl, re.MULTILINE), (ref, crictl)
        assert docker(docker_env, "exec", name, "cat", "/kind/version").strip() == VERSIONS["K8S_VERSION"]
        assert "Kubernetes " + VERSIONS["K8S_VERSION"] in docker(docker_env, "exec", name, "kubelet", "--version")
    finally:
        docker(docker_env, "rm", "-f", "-v", name, check=False)
        docker(docker_env, "network", "rm", name, check=False)
