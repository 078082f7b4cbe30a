"""A dockerd of our own in its own network namespace: the Python handle on dockerd.sh (the one owner of the
daemon's lifecycle: integration/k8s and integration/kind call the script, the docker-node suite this class).

An instance is named; its run dir (pidfile, socket, exec-root, log) is /run/pycni-docker/<name>, its namespace
pycni-docker-<name>, its cgroup parent /pycni-docker-<name>; the data-root is given (the suites keep it in their
scratch dir). `dockerd.sh stop` stops it by PID and removes the namespace, mounts, cgroups and run dir.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cleanup import Cleanup, log
from .processes import run

DOCKERD_SH = Path(__file__).resolve().with_name("dockerd.sh")
RUN_ROOT = Path("/run/pycni-docker")


def _env(name: str, data: Path) -> dict[str, str]:
    return {**os.environ, "PYCNI_DOCKER_NAME": name, "PYCNI_DOCKER_DATA": str(data)}


def stop_instance(value: str) -> bool:
    """`dockerd.sh stop` for a ledger entry "<name> <data-root>" when anything of it is left; whether it was."""
    name, _, data = value.partition(" ")
    if not ((RUN_ROOT / name).exists() or Path(f"/var/run/netns/pycni-docker-{name}").exists()):
        return False
    run(["bash", str(DOCKERD_SH), "stop"], env=_env(name, Path(data)), check=False, timeout=180)
    return True


class DockerHost:
    """dockerd.sh instance `name`, data-root `data`; recorded in the scratch ledger before it starts (a run
    killed meanwhile is reaped by the next one) and stopped by `cleanup`."""

    def __init__(self, name: str, data: Path, cleanup: Cleanup, scratch=None) -> None:
        self.name, self.data = name, data
        self.netns = f"pycni-docker-{name}"
        self.ns_path = f"/var/run/netns/{self.netns}"
        self.run_dir = RUN_ROOT / name
        self.sock = self.run_dir / "docker.sock"
        self.cgroup_parent = f"/pycni-docker-{name}"
        self.client = None
        if scratch is not None:
            scratch.record("dockerd", f"{name} {data}")
        cleanup.add(f"dockerd {name}", self.stop)

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.run_dir / "dockerd.pid").read_text())
        except (OSError, ValueError):
            return None

    def env(self) -> dict[str, str]:
        """The environment of a docker CLI talking to this daemon."""
        return {**os.environ, "DOCKER_HOST": self.url}

    def start(self, timeout: float = 120) -> None:
        out = run(["bash", str(DOCKERD_SH), "start"], env=_env(self.name, self.data), timeout=timeout).stdout
        if f"DOCKER_HOST={self.url}" not in out:
            raise RuntimeError(f"dockerd.sh start printed {out!r}, expected DOCKER_HOST={self.url}")
        import docker  # the docker SDK (venv), only for the suites that drive docker from Python

        self.client = docker.DockerClient(base_url=self.url, timeout=120)
        self.client.ping()
        log(f"dockerd {self.name}: pid {self.pid}, netns {self.netns}, data-root {self.data}")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        stop_instance(f"{self.name} {self.data}")
