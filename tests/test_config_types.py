"""Strict, typed decoding at the configuration boundary (issue 14 item 2, issue 15 item 9).

The Go reference plugins decode their configuration with encoding/json into typed structs: a string
is not a number, a number is not a boolean, 1500.0 is not an int. pycni refuses the same values with
code 7 (SPEC.md "Error": invalid network configuration), never 100. The cases are generated from the
configuration models themselves: every field of both plugins' models (nested models, list items and
runtime keys included) gets each value of a wrong JSON type, and every bounded integer gets the first
value past its bound; a field whose type the generator does not know fails `test_every_field_has_cases`,
so a new field cannot go without a case.

Each case runs the whole protocol in-process (pycni.runner.run, ADD) with CNI_NETNS naming a namespace
that does not exist and dataDir in tmp_path: a wrongly accepted value would end in code 4 (bridge) or
a store written under tmp_path (host-local), never in a change to this machine.
"""

from __future__ import annotations

import json
import types
import typing
import uuid
from typing import Any, Literal

import annotated_types
import pytest
from pydantic import BaseModel

from pycni import runner
from pycni.bridge.config import BridgeConf
from pycni.ipam.config import Config as HostLocalConf

MISSING_NETNS = f"/var/run/netns/pycni-absent-{uuid.uuid4().hex[:8]}"

# Valid values for the fields a filler element needs (required keys of list items and sub-objects).
VALID = {"dst": "10.5.0.0/16", "containerID": "c1", "ifname": "eth0", "subnet": "10.9.0.0/24"}


def base(plugin: str, data_dir: str) -> dict:
    ipam = {"type": "pycni-host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.9.0.0/24"}]]}
    return {"cniVersion": "1.1.0", "name": "typenet", "type": plugin, "ipam": ipam}


MODELS = {"pycni": BridgeConf, "pycni-host-local": HostLocalConf}


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, f"no generator for the union {annotation}"
        return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def wrong_values(annotation: Any, metadata: list) -> list:
    """JSON values of the wrong type for `annotation` (and past its bounds), as Go refuses them."""
    t = _strip_optional(annotation)
    origin = typing.get_origin(t)
    if t is str:
        return [5, True, ["x"]]
    if t is bool:
        return ["yes", "true", 1, 0]
    if t is int:
        out: list = ["5", "1500", 5.0, 1500.0, True, 1.5]
        for m in metadata:
            if isinstance(m, annotated_types.Le):
                out.append(m.le + 1)
            if isinstance(m, annotated_types.Ge):
                out.append(m.ge - 1)
        return out
    if origin is Literal:
        return [5, True, "not-" + str(typing.get_args(t)[0])]
    if origin is list:
        item = _strip_optional(typing.get_args(t)[0])
        return ["x", 5, {}] + ([[5]] if item is str else [])
    if origin is dict or t is dict:
        values = typing.get_args(t)[1:] if origin is dict else ()
        return ["x", 5, []] + ([{"portMappings": "yes"}] if values == (bool,) else [])
    if _is_model(t):
        return ["x", 5, []]
    raise AssertionError(f"no wrong-typed value known for {annotation!r}")


def filler(annotation: Any) -> Any:
    """A valid value for a container on the way to a nested field."""
    t = _strip_optional(annotation)
    if _is_model(t):
        return {name: VALID[name] for name, f in t.model_fields.items() if f.is_required() and name != "type"}
    if typing.get_origin(t) is list:
        return [filler(typing.get_args(t)[0])]
    raise AssertionError(f"no filler for {annotation!r}")


def walk(model: type[BaseModel], path: tuple = ()) -> typing.Iterator[tuple[tuple, Any, list]]:
    """(path, annotation, metadata) of every field, recursing into sub-models and list items."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        here = (*path, key)
        yield here, field.annotation, field.metadata
        t = _strip_optional(field.annotation)
        while typing.get_origin(t) is list:
            here = (*here, 0)
            t = _strip_optional(typing.get_args(t)[0])
        if _is_model(t) and not (path == () and key == "prevResult"):
            yield from walk(t, here)


def place(conf: dict, model: type[BaseModel], path: tuple, value: Any) -> dict:
    """`conf` with `value` at `path`, every container on the way filled with valid content."""
    conf = json.loads(json.dumps(conf))
    node: Any = conf
    annotation: Any = model
    for i, key in enumerate(path[:-1]):
        t = _strip_optional(annotation)
        if isinstance(key, int):
            annotation = typing.get_args(t)[0]
        else:
            annotation = t.model_fields[_field_name(t, key)].annotation
        nxt = path[i + 1]
        if isinstance(key, int):
            if not node:
                node.append(filler(annotation))
            node = node[0]
        else:
            if not isinstance(node.get(key), (dict, list)) or (isinstance(nxt, int) and not node[key]):
                node[key] = filler(annotation)
            node = node[key]
    node[path[-1]] = value
    return conf


def _field_name(model: type[BaseModel], key: str) -> str:
    for name, field in model.model_fields.items():
        if (field.alias or name) == key:
            return name
    raise KeyError(key)


def run_add(plugin: str, conf: dict) -> dict:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "typectr", "CNI_NETNS": MISSING_NETNS, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    status, out = runner.run(plugin, env, json.dumps(conf).encode())
    return {"status": status, **(json.loads(out) if out else {})}


# The GC lists are parsed by the one GC attachment parser (pycni.spec.gc; its cases: tests/test_gc.py,
# tests/test_hostile.py); prevResult is a result of any version (pycni.spec.result): only its being
# an object is the configuration's business.
NOT_HERE = {"cni.dev/valid-attachments", "cni.dev/attachments"}
# Checked before the model: the version (SPEC.md: not a string is undecodable, code 6) and the name.
EXPECTED = {("cniVersion",): 6}


def cases() -> list:
    out = []
    for plugin, model in MODELS.items():
        for path, annotation, metadata in walk(model):
            if path[0] in NOT_HERE:
                continue
            for value in wrong_values(annotation, metadata):
                out.append(pytest.param(plugin, path, value, id=f"{plugin}-{'.'.join(map(str, path))}={value!r}"))
    return out


CASES = cases()


def test_every_field_has_cases():
    """Generated from the models: every field of both plugins is covered (a new one is too)."""
    covered = {(c.values[0], c.values[1]) for c in CASES}
    for plugin, model in MODELS.items():
        for path, _, _ in walk(model):
            assert path[0] in NOT_HERE or (plugin, path) in covered, (plugin, path)
    # the values the issues name, so the generator cannot quietly stop producing them
    ids = {c.id for c in CASES}
    for expected in ("pycni-mtu='1500'", "pycni-vlan='5'", "pycni-isGateway='yes'", "pycni-mtu=1500.0",
                     "pycni-host-local-ipam.routes.0.mtu=4294967296",
                     "pycni-host-local-runtimeConfig.ipRanges.0.0.subnet=5"):
        assert expected in ids, expected


@pytest.mark.parametrize(("plugin", "path", "value"), CASES)
def test_wrong_type_is_refused(tmp_path, plugin, path, value):
    conf = place(base(plugin, str(tmp_path / "ipam")), MODELS[plugin], path, value)
    answer = run_add(plugin, conf)
    assert (answer["status"], answer.get("code")) == (1, EXPECTED.get(path, 7)), (conf, answer)
    if path not in EXPECTED and path != ("name",):  # the error names the field at fault
        assert ".".join(map(str, path)) in answer.get("details", ""), answer
    assert not (tmp_path / "ipam").exists()  # nothing was allocated


@pytest.mark.parametrize(("plugin", "path", "value", "code"), [
    ("pycni", ("mtu",), None, 4),  # Go: null leaves the field at its default
    ("pycni", ("preserveDefaultVlan",), None, 4),
    ("pycni", ("ipam",), {}, 4),  # "ipam": {} is "no IPAM" (layer 2 only)
    ("pycni", ("ipam",), {"ranges": [[{"subnet": "10.9.0.0/24"}]]}, 7),  # SPEC.md: ipam.type is required
    ("pycni", ("ipam",), {"type": ""}, 7),
    ("pycni", ("ipam", "type"), "a/b", 7),
    ("pycni-host-local", ("ipam",), {"ranges": [[{"subnet": "10.9.0.0/24"}]]}, 7),
    ("pycni-host-local", ("ipam", "routes", 0, "table"), 2**32 - 1, 0),
    ("pycni-host-local", ("ipam", "routes", 0, "mtu"), 2**40, 7),
    ("pycni-host-local", ("ipam", "routes", 0, "priority"), 2**33, 7),
    ("pycni-host-local", ("ipam", "routes", 0, "advmss"), 2**40, 7),
    ("pycni-host-local", ("ipam", "routes", 0, "scope"), 256, 7),
    ("pycni-host-local", ("runtimeConfig", "ipRanges"), [[{"subnet": 5}]], 7),
    ("pycni-host-local", ("runtimeConfig", "ipRanges"), [[{"subnet": "10.8.0.0/24"}]], 0),
])
def test_named_values(tmp_path, plugin, path, value, code):
    conf = place(base(plugin, str(tmp_path / "ipam")), MODELS[plugin], path, value)
    answer = run_add(plugin, conf)
    assert answer.get("code", 0) == code, answer
    if code == 0:
        assert answer["status"] == 0 and answer["ips"], answer
