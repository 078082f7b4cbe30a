"""A real cold ADD and DEL of the bridge plugin in a node namespace (root): what the verb imports and that
it patches nothing (the root-free checks of the cold path: tests/unit/test_cli_cold_path.py)."""

from __future__ import annotations

from import_audit import audited


def test_a_cold_add_patches_nothing_and_imports_what_coldpath_stages(netns, node, tmp_path):
    """A real cold ADD (and DEL) in a node namespace: pyroute2 is the package its own __init__ made,
    nothing in sys.modules is pycni's handiwork, and the modules bench/coldpath.py stages (to split
    the verb's CPU) are all imported by the verb itself."""
    pod = netns.create("pycnit-pod")
    conf = {"cniVersion": "1.0.0", "name": "coldnet", "type": "pycni", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "pycni-host-local", "subnet": "10.78.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    env = {"CNI_CONTAINERID": "cold-1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
           "CNI_NETNS": netns.path(pod),
           "PYCNI_NO_DAEMON": "", "PYCNI_SOCKET": str(tmp_path / "no-daemon.sock")}  # as a runtime runs it: no daemon
    staged = {"pycni.cli", "pycni.daemon.client", "pydantic.main", "importlib.metadata", "pycni.spec.config",
              "pycni.spec.result", "pycni.bridge.verbs", "pycni.bridge.config", "pycni.ipam.verbs", "pycni.ipam.config",
              "pyroute2"}
    for verb in ("ADD", "DEL"):
        proc, report = audited(verb, conf, node=node, **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
        assert report["bad"] == [], (verb, report["bad"])
        assert staged <= set(report["modules"]), staged - set(report["modules"])
