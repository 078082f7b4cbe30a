"""Run the bridge plugin cold and report, after its verb, what it left in sys.modules
(tests/unit/test_cli_cold_path.py, tests/netns/test_cli_cold_add.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Run the plugin cold, then (atexit, after the verb) report what it left in sys.modules: a module
# without a spec (made by hand, not by the import system) or a stdlib/third-party module holding a
# function defined by pycni (a stand-in or a monkeypatch) is a patched private internal (issue 14).
AUDIT = """
import atexit, json, os, sys, types
def audit():
    bad = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("pycni") or name in ("__main__", "__mp_main__") or not isinstance(mod, types.ModuleType):
            continue
        if getattr(mod, "__spec__", None) is None:
            bad.append(name + ": not made by the import system")
        for attr, value in list(vars(mod).items()):
            if callable(value) and str(getattr(value, "__module__", None) or "").startswith("pycni"):
                bad.append(f"{name}.{attr} is pycni's {value.__module__}")
    pydantic_plugins = None
    if "pydantic" in sys.modules:
        from pydantic.plugin._loader import get_plugins
        pydantic_plugins = len(list(get_plugins()))
    os.write(2, ("AUDIT " + json.dumps({"bad": bad, "modules": sorted(sys.modules),
                                        "pydantic_plugins": pydantic_plugins,
                                        "env": os.environ.get("PYDANTIC_DISABLE_PLUGINS")}) + "\\n").encode())
atexit.register(audit)
from pycni.cli import main_bridge
main_bridge()
"""


def audited(command: str, conf: dict, node: str | None = None, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "PYCNI_NO_DAEMON": "1",
                **env}
    argv = [sys.executable, "-c", AUDIT]
    if node:
        argv = ["nsenter", f"--net=/var/run/netns/{node}", "--", *argv]
    proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=proc_env, capture_output=True, timeout=120,
                          check=False)
    lines = [line for line in proc.stderr.decode().splitlines() if line.startswith("AUDIT ")]
    assert lines, proc.stderr[-2000:]
    return proc, json.loads(lines[-1][6:])
