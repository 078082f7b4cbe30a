"""The local back end: a kind-style cluster of docker node containers, driven with the docker SDK.

`LocalCluster.up()`:
1. dockerd in its own network namespace (integration/harness: dockerd.sh), data-root in the scratch dir;
2. the pycni bundle (integration/bundle/build.sh, the recipe of `make bundle`) unless one is given;
3. the node image, built offline and `docker import`ed (kl_image);
4. one docker network, and N node containers on it with fixed addresses, each running the pycni agent
   (fed one shared nodes file, bind-mounted read-only: `[{"name","address","podCIDRs"}]`, what the API
   gives on real kind) and its own containerd with the CRI plugin;
5. waits until every node has containerd up, the pod image imported, the conflist the agent wrote
   and the agent's routes to every other node.

Pods are created through each node's CRI socket (bind-mounted to the host) like kubelet does:
RunPodSandbox (-> CNI ADD by containerd: loopback, then pycni + portmap from the agent's conflist),
CreateContainer/StartContainer, ExecSync; delete = StopPodSandbox + RemovePodSandbox (-> CNI DEL).

Node containers are started like kind's: `docker run --privileged` through integration/kind/docker, the wrapper
that turns --privileged (which fails on this VM: no CAP_SYS_RESOURCE in the bounding set) into every other
capability, unconfined seccomp/AppArmor and all devices, and runs integration/kind/node-preinit.sh (cgroup mounts
read-write, /dev/kmsg, /proc/sys/net) before the image's entrypoint; no masked /proc paths
(`systempaths=unconfined`). The "caps" mode of shared/lab/kindlab/REPORT.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import kl_image
from harness.cleanup import Cleanup, log
from harness.dockerd import DockerHost
from harness.processes import run
from harness.scratch import Scratch
from harness.wait import NotYet, retry
from kl_checks import HTTP_PORT, POD_COMMAND, Pod

REPO = Path(__file__).resolve().parents[2]
KIND_DOCKER = REPO / "integration/kind/docker"  # the docker of kind on these machines (no --privileged here)
CLUSTER_CIDR = "10.244.0.0/16"
NODE_NET = "172.30.99"  # .0/24 inside the dedicated namespace only
NETWORK_NAME = "pycni"  # the conflist's network name: leases in /var/lib/cni/networks/pycni


def build_bundle(out: Path) -> Path:
    """The recipe `make bundle` runs, into our scratch dir (so the bundle has this checkout's agent)."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "integration/bundle/build.sh")], env={**os.environ, "OUT": str(out)},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bundle build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    log(f"bundle built in {time.monotonic() - t0:.1f}s")
    return out / "bundle"


class LocalCluster:
    name = "local docker nodes"
    supports = frozenset()  # no kube-proxy, no CoreDNS: Service and DNS checks are kind-only
    namespace = "default"

    def __init__(self, cleanup: Cleanup, n_nodes: int = 3, bundle: Path | None = None) -> None:
        self.cleanup = cleanup
        self.n_nodes = n_nodes
        self.bundle = bundle
        self.scratch: Scratch | None = None
        self.host: DockerHost | None = None
        self.id = uuid.uuid4().hex[:6]
        self.node_names = [f"kl-n{i + 1}" for i in range(n_nodes)]
        self.node_ips = {n: f"{NODE_NET}.{i + 2}" for i, n in enumerate(self.node_names)}
        self.pod_cidrs = {n: f"10.244.{i + 1}.0/24" for i, n in enumerate(self.node_names)}
        self.containers: dict[str, object] = {}
        self._stubs: dict[str, tuple] = {}
        self.timings: dict[str, float] = {}

    # -- bring-up --------------------------------------------------------------------------------------

    def up(self) -> None:
        t0 = time.monotonic()
        self.scratch = Scratch("pycnikl", self.cleanup, logs="kindlab-logs")
        scratch = self.scratch.path
        self.host = host = DockerHost(f"kl-{self.id}", scratch / "docker-root", self.cleanup, self.scratch)
        host.start()
        self.client = host.client
        self.timings["dockerd"] = time.monotonic() - t0
        log(f"dockerd pid {host.pid} in netns {host.netns}, scratch {scratch}")
        if self.bundle is None:
            self.bundle = build_bundle(scratch / "bundle-build")
        t = time.monotonic()
        pod_tar = kl_image.build_pod_image(scratch / "pod-image.tar")
        root = kl_image.build_node_rootfs(scratch / "rootfs", self.bundle, pod_tar)
        kl_image.import_node_image(root, host.env())
        subprocess.run(["rm", "-rf", str(root)], check=False)
        self.timings["image"] = time.monotonic() - t
        self.cleanup.add("docker objects", self._remove_docker_objects)

        t = time.monotonic()
        import docker

        self.network = self.client.networks.create(
            "pycni-kindlab", driver="bridge",
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                subnet=f"{NODE_NET}.0/24", gateway=f"{NODE_NET}.1")]))
        self.cluster_dir = scratch / "cluster"
        self.cluster_dir.mkdir()
        self.write_nodes_file(self.node_names)
        for name in self.node_names:
            self._run_node(name)
        self.wait_ready()
        self.timings["nodes"] = time.monotonic() - t
        self.timings["up"] = time.monotonic() - t0
        log("cluster up: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))

    def write_nodes_file(self, names: list[str]) -> None:
        """What the API server is on real kind: every node's address and pod CIDR (atomic rename)."""
        doc = [{"name": n, "address": self.node_ips[n], "podCIDRs": [self.pod_cidrs[n]]} for n in names]
        tmp = self.cluster_dir / ".nodes.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.rename(self.cluster_dir / "nodes.json")

    def _run_node(self, name: str) -> None:
        """`docker run --privileged` through integration/kind/docker, as kind starts its nodes: the wrapper turns
        --privileged into what runs on these machines and puts node-preinit.sh before the image's entrypoint."""
        sockdir = self.scratch.path / "nodes" / name
        sockdir.mkdir(parents=True)
        volume = f"{name}-containerd-{self.id}"
        self.client.volumes.create(volume, labels={"pycni-kindlab": self.id})
        argv = [str(KIND_DOCKER), "run", "-d", "--init", "--privileged",
                "--security-opt", "systempaths=unconfined",  # no masked or read-only /proc paths
                "--network", self.network.name, "--ip", self.node_ips[name],
                "--tmpfs", "/run", "--tmpfs", "/tmp",
                "--volume", "/lib/modules:/lib/modules:ro", "--volume", f"{sockdir}:/kindsock:rw",
                "--volume", f"{self.cluster_dir}:/etc/pycni:ro", "--volume", f"{volume}:/var/lib/containerd:rw",
                "--name", f"{name}-{self.id}", "--hostname", name,
                "--label", f"pycni-kindlab={self.id}", "--label", f"pycni-kindlab.node={name}",
                "--env", f"NODE_NAME={name}", "--env", f"CLUSTER_CIDR={CLUSTER_CIDR}", kl_image.NODE_IMAGE]
        cid = run(argv, env=self.host.env(), timeout=120).stdout.strip()
        self.containers[name] = self.client.containers.get(cid)

    def node_sh(self, node: str, script: str) -> tuple[int, str]:
        r = self.containers[node].exec_run(["sh", "-c", script])
        return r.exit_code, r.output.decode(errors="replace")

    def agent_routes(self, node: str) -> list[str]:
        rc, out = self.node_sh(node, "/usr/sbin/ip route show proto 156")
        return sorted(line.strip() for line in out.splitlines() if line.strip()) if rc == 0 else []

    def wait_ready(self, timeout: float = 60.0) -> None:
        pending = set(self.node_names)

        def all_ready() -> None:
            for node in sorted(pending):
                rc, _ = self.node_sh(node, "test -e /run/kindlab-ready && test -e /etc/cni/net.d/10-pycni.conflist")
                if rc == 0 and len(self.agent_routes(node)) == len(self.node_names) - 1 and self._network_ready(node):
                    pending.discard(node)
            if pending:
                raise NotYet(f"pending: {sorted(pending)}")
        try:
            retry(all_ready, "nodes ready", timeout=timeout, interval=0.2)
        except TimeoutError:
            details = {n: self.node_sh(n, "tail -5 /var/log/pycni-agent.log; tail -3 /var/log/image-import.log")[1]
                       for n in pending}
            raise RuntimeError(f"nodes not ready after {timeout}s: {details}") from None

    # -- CRI -----------------------------------------------------------------------------------------------

    def _cri(self, node: str):
        if node not in self._stubs:
            import grpc
            from cri_api.v1 import api_pb2 as cri
            from cri_api.v1.api_pb2_grpc import RuntimeServiceStub

            ch = grpc.insecure_channel(f"unix://{self.scratch.path}/nodes/{node}/containerd.sock")
            self._stubs[node] = (RuntimeServiceStub(ch), cri, ch)
        return self._stubs[node][:2]

    def _network_ready(self, node: str) -> bool:
        try:
            rt, cri = self._cri(node)
            conds = rt.Status(cri.StatusRequest(), timeout=5).status.conditions
            return all(c.status for c in conds)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    # -- the Cluster interface ---------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        return list(self.node_names)

    def node_ip(self, node: str) -> str:
        return self.node_ips[node]

    def run_pod(self, name: str, node: str, host_port: int = 0) -> Pod:
        rt, cri = self._cri(node)
        uid = str(uuid.uuid4())
        cfg = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace="default", attempt=0),
            hostname=name, log_directory=f"/var/log/pods/{name}_{uid}",
            port_mappings=[cri.PortMapping(protocol=cri.TCP, container_port=HTTP_PORT, host_port=host_port)]
            if host_port else [],
            linux=cri.LinuxPodSandboxConfig(cgroup_parent="/kubepods"))
        sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
        ccfg = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app", attempt=0),
                                   image=cri.ImageSpec(image=kl_image.POD_IMAGE), command=POD_COMMAND,
                                   log_path="app.log")
        cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg),
                                 timeout=60).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
        st = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=30).status
        return Pod(name=name, node=node, ip=st.network.ip, handle={"sandbox": sid, "container": cid})

    def exec(self, pod: Pod, argv: list[str], timeout: float = 15) -> tuple[int, str]:
        rt, cri = self._cri(pod.node)
        r = rt.ExecSync(cri.ExecSyncRequest(container_id=pod.handle["container"], cmd=argv, timeout=int(timeout)),
                        timeout=timeout + 10)
        return r.exit_code, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")

    def delete_pod(self, pod: Pod) -> None:
        rt, cri = self._cri(pod.node)
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.handle["sandbox"]), timeout=60)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.handle["sandbox"]), timeout=60)

    def leases(self, node: str) -> list[str]:
        _rc, out = self.node_sh(node, f"ls /var/lib/cni/networks/{NETWORK_NAME} 2>/dev/null")
        return [f for f in out.split() if f not in ("lock",) and not f.startswith("last_reserved_ip")]

    def service(self, name: str, pod: Pod, port: int) -> str:
        raise NotImplementedError("no kube-proxy in the local back end")

    def delete_service(self, name: str) -> None:
        raise NotImplementedError

    # -- teardown ------------------------------------------------------------------------------------------

    def remove_all_pods(self) -> None:
        for node in self.node_names:
            if node not in self.containers:
                continue
            try:
                rt, cri = self._cri(node)
                for sb in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items:
                    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
                    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
            except Exception as exc:  # noqa: BLE001 - the node may be gone already
                log(f"{node}: CRI cleanup: {exc}")

    def _remove_docker_objects(self) -> None:
        self.remove_all_pods()
        for _, _, ch in self._stubs.values():
            ch.close()
        self._stubs.clear()
        label = f"pycni-kindlab={self.id}"
        for c in self.client.containers.list(all=True, filters={"label": label}):
            try:
                logs = c.logs(tail=200).decode(errors="replace")
                (self.scratch.path / f"{c.name}.log").write_text(logs)
                for path in ("/var/log/pycni-agent.log", "/var/log/pycni.log"):
                    r = c.exec_run(["cat", path]) if c.status == "running" else None
                    if r is not None and r.exit_code == 0:
                        (self.scratch.path / f"{c.name}-{Path(path).name}").write_bytes(r.output[-2_000_000:])
            except Exception as exc:  # noqa: BLE001 - logs are best effort
                log(f"{c.name}: could not save logs: {exc}")
            c.remove(force=True, v=True)
        for v in self.client.volumes.list(filters={"label": label}):
            v.remove(force=True)
        for n in self.client.networks.list(names=["pycni-kindlab"]):
            n.remove()
        for img in (kl_image.NODE_IMAGE,):
            try:
                self.client.images.remove(img, force=True)
            except Exception as exc:  # noqa: BLE001 - dockerd's data-root goes with the scratch dir anyway
                log(f"image {img}: {exc}")
        self.client.close()
