"""containerd (Debian's 1.6, CRI plugin) in a node namespace, and a CRI v1 client that acts as kubelet.

The client uses PyPI `container-runtime-interface-api` (generated CRI v1 stubs) over containerd's unix
socket; the socket is a file, so the client needs no network and runs in the test process.
"""

from __future__ import annotations

import json
import signal
import string
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1.api_pb2_grpc import ImageServiceStub, RuntimeServiceStub
from harness.cleanup import log
from harness.daemon import Daemon
from harness.netns import Node
from harness.wait import NotYet, retry, wait_for

HERE = Path(__file__).resolve().parent
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class Containerd:
    """One containerd with its own root, state, socket and CNI dirs, all under `scratch`."""

    def __init__(self, node: Node, scratch: Path, cni_bin_dir: Path, cni_conf_dir: Path, sandbox_image: str):
        self.node, self.scratch = node, scratch
        self.socket = scratch / "containerd.sock"
        self.config = scratch / "config.toml"
        self.logfile = scratch / "containerd.log"
        tmpl = string.Template((HERE / "containerd.toml.tmpl").read_text())
        self.config.write_text(tmpl.substitute(
            scratch=scratch, socket=self.socket, cni_bin_dir=cni_bin_dir, cni_conf_dir=cni_conf_dir,
            sandbox_image=sandbox_image))
        self.daemon: Daemon | None = None

    def start(self, timeout: float = 30) -> None:
        self.socket.unlink(missing_ok=True)
        self.daemon = Daemon(self.node, ["containerd", "--config", str(self.config)], self.logfile, DAEMON_ENV)
        self.daemon.start()
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            if not self.daemon.alive():
                raise RuntimeError(f"containerd exited: {self.daemon.log_tail()}")
            if not self.socket.exists():
                return False
            CRI(self.socket).wait_ready(deadline - time.monotonic())
            return True
        wait_for(ready, f"containerd ready ({self.logfile})", timeout=timeout, interval=0.1, retry_on=(grpc.RpcError,))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon is not None:
            self.daemon.stop(sig)

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return self.node.run("ctr", "--address", str(self.socket), *args, timeout=timeout).stdout


@dataclass
class Pod:
    name: str
    id: str
    config: cri.PodSandboxConfig
    ip: str = ""
    netns: str = ""
    containers: list[str] = field(default_factory=list)


class CRI:
    """What kubelet does, reduced to the calls these tests need."""

    def __init__(self, socket: Path, timeout: float = 60):
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.rt = RuntimeServiceStub(self.channel)
        self.im = ImageServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float) -> None:
        def ready() -> None:
            st = self.rt.Status(cri.StatusRequest(verbose=False), timeout=5)
            conds = {c.type: c.status for c in st.status.conditions}
            if not (conds.get("RuntimeReady") and conds.get("NetworkReady")):
                raise NotYet(f"CRI not ready: {st.status.conditions}")
        retry(ready, "CRI RuntimeReady and NetworkReady", timeout=max(timeout, 1), interval=0.2)

    def version(self) -> str:
        v = self.rt.Version(cri.VersionRequest(), timeout=10)
        return f"{v.runtime_name} {v.runtime_version} (CRI {v.runtime_api_version})"

    def images(self) -> list[str]:
        return [t for i in self.im.ListImages(cri.ListImagesRequest(), timeout=10).images for t in i.repo_tags]

    def run_pod(self, name: str, log_root: Path, cgroup_parent: str = "",
                port_mappings: list[tuple[int, int]] = ()) -> Pod:
        uid = str(uuid.uuid4())
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace="pycni-test", attempt=0),
            hostname=name,
            log_directory=str(log_root / name),
            port_mappings=[cri.PortMapping(protocol=cri.TCP, container_port=c, host_port=h)
                           for c, h in port_mappings],
            linux=cri.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
        )
        resp = self.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=self.timeout)
        pod = Pod(name=name, id=resp.pod_sandbox_id, config=config)
        self.refresh(pod)
        return pod

    def status(self, pod_id: str) -> tuple[cri.PodSandboxStatus, dict]:
        resp = self.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                        timeout=self.timeout)
        return resp.status, json.loads(resp.info.get("info", "{}"))

    def refresh(self, pod: Pod) -> None:
        status, info = self.status(pod.id)
        pod.ip = status.network.ip
        pod.netns = netns_path_of(info)

    def create_container(self, pod: Pod, name: str, image: str, command: list[str]) -> str:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=cri.ImageSpec(image=image),
            command=command,
            log_path=f"{name}.log",
            linux=cri.LinuxContainerConfig(),
        )
        resp = self.rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod.id, config=config,
                                                                  sandbox_config=pod.config),
                                       timeout=self.timeout)
        self.rt.StartContainer(cri.StartContainerRequest(container_id=resp.container_id), timeout=self.timeout)
        pod.containers.append(resp.container_id)
        return resp.container_id

    def container_state(self, cid: str) -> cri.ContainerStatus:
        return self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid), timeout=self.timeout).status

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 10) -> tuple[int, str, str]:
        resp = self.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout),
                                timeout=timeout + 10)
        return resp.exit_code, resp.stdout.decode(errors="replace"), resp.stderr.decode(errors="replace")

    def stop_and_remove(self, pod: Pod) -> None:
        self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=self.timeout)
        self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=self.timeout)

    def sandboxes(self) -> list[cri.PodSandbox]:
        return list(self.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=self.timeout).items)

    def remove_all(self) -> list[str]:
        """Stop and remove every sandbox (and so every container); returns the IDs it removed."""
        removed = []
        for sb in self.sandboxes():
            try:
                self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=self.timeout)
                self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=self.timeout)
                removed.append(sb.id)
            except grpc.RpcError as exc:
                log(f"could not remove sandbox {sb.id[:12]}: {exc.details()}")
        return removed


def netns_path_of(info: dict) -> str:
    """The pod's network namespace file, from the verbose PodSandboxStatus info."""
    path = info.get("netNamespacePath") or ""
    if not path:
        for ns in (info.get("runtimeSpec", {}).get("linux", {}).get("namespaces") or []):
            if ns.get("type") == "network":
                path = ns.get("path", "")
    return path
