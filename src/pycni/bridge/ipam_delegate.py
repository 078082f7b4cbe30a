"""IPAM delegation (SPEC.md "Section 4: Plugin Delegation", CONVENTIONS.md / SPEC.md "IP Allocation").

"The main plugin executes the IPAM plugin ... with the same environment variables and the full
network configuration on stdin": the delegate is the executable named `ipam.type`, looked up in
CNI_PATH (SPEC.md "Delegated plugin execution procedure"), run with CNI_COMMAND set to the verb,
and its single stdout document is either a result or an error object. An error is passed back
unchanged (its code included); a delegate that cannot be found, run or understood is code 104.

When `ipam.type` is pycni's own host-local, the same verbs run in-process (pycni.ipam.verbs): no
fork/exec, no second interpreter start. The Request it gets is built exactly as runner.run would
build it, so the behaviour is the one the executable has.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from typing import Any

from ..spec.errors import DELEGATE_FAILED, CNIError
from ..spec.request import Request
from ..spec.result import Result

IN_PROCESS = "pycni-host-local"


@dataclasses.dataclass(frozen=True)
class InProcess:
    """pycni-host-local run in this process: its request and settings, parsed and validated once."""

    request: Request
    settings: Any  # pycni.ipam.config.IPAMConfig


def ipam_type(req: Request) -> str:
    """`ipam.type`, already checked to be a plugin file name when the configuration was loaded
    (spec.config.IPAM)."""
    return req.conf.ipam_type


def precheck(req: Request) -> InProcess | None:
    """Validate the IPAM configuration before ADD touches the node, when it is ours (in-process):
    a bad range or CNI_ARGS IP is then refused with nothing created. An exec'd delegate validates
    its own configuration when it runs. The answer is passed to add() so that nothing is parsed twice."""
    if ipam_type(req) != IN_PROCESS:
        return None
    return _in_process(req)


def add(req: Request, local: InProcess | None = None) -> Result:
    """SPEC.md "ADD" on the delegate: returns its result (any version, converted)."""
    out = _call(req, "ADD", local)
    if isinstance(out, Result):
        return out
    if not out:
        raise CNIError(DELEGATE_FAILED, f"IPAM plugin {ipam_type(req)!r} printed no result")
    return Result.parse(out)


def delete(req: Request, local: InProcess | None = None) -> None:
    _call(req, "DEL", local)


def check(req: Request) -> None:
    _call(req, "CHECK")


def status(req: Request) -> None:
    _call(req, "STATUS")


def gc(req: Request) -> None:
    _call(req, "GC")


def _call(req: Request, verb: str, local: InProcess | None = None) -> Result | dict | None:
    name = ipam_type(req)
    if name == IN_PROCESS:
        from ..ipam import verbs as host_local

        local = local or _in_process(req)
        sub = dataclasses.replace(local.request, env=dataclasses.replace(local.request.env, command=verb))
        func = {"ADD": "add", "DEL": "delete", "CHECK": "check", "STATUS": "status", "GC": "gc"}[verb]
        return getattr(host_local, func)(sub, local.settings)
    return _exec(name, req, verb)


def _in_process(req: Request) -> InProcess:
    from ..ipam import verbs as host_local
    from ..spec.config import load
    from ..spec.env import parse_cni_args

    conf = load(host_local.Config, req.raw)
    sub = Request(env=req.env, conf=conf, raw=req.raw, stdin=req.stdin, version=req.version,
                  cni_args=parse_cni_args(req.env.args, host_local.KNOWN_ARGS), environ=req.environ,
                  context=req.context)
    return InProcess(sub, host_local.settings(sub))


def find_in_path(name: str, paths: tuple[str, ...]) -> str:
    """SPEC.md "Section 4": the delegate is found in CNI_PATH (first match wins, like libcni)."""
    for directory in paths:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(DELEGATE_FAILED, f"failed to find plugin {name!r} in path {list(paths)}")


def _exec(name: str, req: Request, verb: str) -> dict | None:
    exe = find_in_path(name, req.env.path)
    env = dict(os.environ if req.environ is None else req.environ)  # the runtime's, also via the daemon
    env.update({
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": req.env.container_id,
        "CNI_NETNS": req.env.netns,
        "CNI_IFNAME": req.env.ifname,
        "CNI_ARGS": req.env.args,
        "CNI_PATH": ":".join(req.env.path),
    })
    for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
        if not env[key]:
            del env[key]
    try:
        proc = subprocess.run([exe], input=req.stdin, env=env, capture_output=True, check=False)
    except OSError as exc:
        raise CNIError(DELEGATE_FAILED, f"failed to execute IPAM plugin {name!r}", str(exc)) from None
    text = proc.stdout.decode("utf-8", "replace").strip()
    data = None
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            if proc.returncode == 0:
                raise CNIError(DELEGATE_FAILED, f"IPAM plugin {name!r} printed invalid JSON", text[:300]) from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if data is None:  # libcni: stdout empty -> the message is stderr
            raise CNIError(DELEGATE_FAILED, f"IPAM plugin {name!r} failed (exit {proc.returncode})",
                           (stderr or text)[:500])
        raise CNIError.from_dict(data, fallback_msg=f"IPAM plugin {name!r} failed")
    return data
