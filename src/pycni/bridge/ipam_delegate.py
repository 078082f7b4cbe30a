"""IPAM delegation (SPEC.md "Section 4: Plugin Delegation", CONVENTIONS.md / SPEC.md "IP Allocation").

"The main plugin executes the IPAM plugin ... with the same environment variables and the full
network configuration on stdin": the delegate is the executable named `ipam.type`, looked up in
CNI_PATH (SPEC.md "Delegated plugin execution procedure"), run with CNI_COMMAND set to the verb,
and its single stdout document is either a result or an error object. An error is passed back
unchanged (its code included); a delegate that cannot be found, run or understood is code 104.

When `ipam.type` is pycni's own host-local, the same verbs run in-process (pycni.ipam.verbs): no
fork/exec, no second interpreter start. The Request it gets is built exactly as cli.run would
build it, so the behaviour is the one the executable has.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

from ..spec.env import valid_name
from ..spec.errors import DELEGATE_FAILED, INVALID_CONFIG, CNIError
from ..spec.request import Request
from ..spec.result import Result

IN_PROCESS = "pycni-host-local"


def ipam_type(req: Request) -> str:
    value = (req.conf.ipam or {}).get("type") or ""
    if not isinstance(value, str) or not valid_name(value):
        raise CNIError(INVALID_CONFIG, "invalid ipam.type", repr(value)[:100])
    return value


def precheck(req: Request) -> None:
    """Validate the IPAM configuration before ADD touches the node, when it is ours (in-process):
    a bad range or CNI_ARGS IP is then refused with nothing created. An exec'd delegate validates
    its own configuration when it runs."""
    if not (req.conf.ipam or {}).get("type") or ipam_type(req) != IN_PROCESS:
        return
    module = _in_process_module()
    if module is None:
        return
    from ..ipam.config import ipam_config
    from ..spec.config import load
    from ..spec.env import parse_cni_args

    ipam_config(load(module.Config, req.raw), parse_cni_args(req.env.args, module.KNOWN_ARGS))


def add(req: Request) -> Result:
    """SPEC.md "ADD" on the delegate: returns its result (any version, converted)."""
    out = _call(req, "ADD")
    if isinstance(out, Result):
        return out
    if not out:
        raise CNIError(DELEGATE_FAILED, f"IPAM plugin {ipam_type(req)!r} printed no result")
    return Result.parse(out)


def delete(req: Request) -> None:
    _call(req, "DEL")


def check(req: Request) -> None:
    _call(req, "CHECK")


def status(req: Request) -> None:
    _call(req, "STATUS")


def gc(req: Request) -> None:
    _call(req, "GC")


def _call(req: Request, verb: str) -> Result | dict | None:
    name = ipam_type(req)
    if name == IN_PROCESS:
        module = _in_process_module()
        if module is not None:
            return _call_in_process(module, req, verb)
    return _exec(name, req, verb)


def _in_process_module():
    try:
        from importlib import import_module

        return import_module("pycni.ipam.verbs")
    except ImportError:
        return None  # not installed: exec the executable of that name instead


def _call_in_process(module, req: Request, verb: str) -> Result | None:
    from ..spec.config import load
    from ..spec.env import parse_cni_args

    env = dataclasses.replace(req.env, command=verb)
    conf = load(module.Config, req.raw)
    sub = Request(env=env, conf=conf, raw=req.raw, stdin=req.stdin, version=req.version,
                  cni_args=parse_cni_args(env.args, module.KNOWN_ARGS))
    func = {"ADD": "add", "DEL": "delete", "CHECK": "check", "STATUS": "status", "GC": "gc"}[verb]
    return getattr(module, func)(sub)


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
