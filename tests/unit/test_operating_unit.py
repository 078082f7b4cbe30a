"""Unit and exec tests of the operator-facing pieces that need no network namespace: the standalone
spool, the metrics address, pools and capacity, conf-dir discovery, the GC valid list, and the
log formats (plain unchanged, JSON one object per line), plus the cold path's imports."""

from __future__ import annotations

import json
import logging
import re

import pytest
from conftest import exec_plugin
from test_cli_cold_path import imports_of

from pycni import logfmt, runstate
from pycni.daemon import spool
from pycni.inspect import gc_preview, netconfs, output, pools
from pycni.ipam.ranges import Range

# -- the standalone spool ------------------------------------------------------------------------------


def test_spool_counts_each_line_once_and_removes_the_file(tmp_path):
    sock = str(tmp_path / "pycni.sock")
    spool.record(sock, "pycni", "ADD", "absent")  # no daemon ever ran here: no spool, nothing written
    assert not (tmp_path / spool.SPOOL_NAME).exists()
    assert spool.drain(sock) == []  # a daemon starts: an empty spool from now on
    spool.record(sock, "pycni", "ADD", "absent")
    spool.record(sock, "pycni-host-local", "DEL", "refused")
    spool.record(sock, "pycni", "VERSION", "absent")  # not counted: no work
    assert spool.drain(sock) == [("pycni", "ADD", "absent"), ("pycni-host-local", "DEL", "refused")]
    assert (tmp_path / spool.SPOOL_NAME).read_bytes() == b""  # taken in, replaced by an empty one
    assert spool.drain(sock) == []


def test_spool_never_creates_the_run_dir_and_stops_at_its_limit(tmp_path):
    spool.record(str(tmp_path / "missing" / "pycni.sock"), "pycni", "ADD", "absent")
    assert not (tmp_path / "missing").exists()
    sock = str(tmp_path / "pycni.sock")
    (tmp_path / spool.SPOOL_NAME).write_bytes(b"x" * spool.MAX_BYTES)
    spool.record(sock, "pycni", "ADD", "absent")
    assert (tmp_path / spool.SPOOL_NAME).stat().st_size == spool.MAX_BYTES


def test_spool_lines_cannot_be_forged_by_odd_values(tmp_path):
    sock = str(tmp_path / "pycni.sock")
    spool.ensure(sock)
    spool.record(sock, "pycni", "ADD\nfake 1 2", "absent")
    assert spool.drain(sock) == [("pycni", "ADDfake12", "absent")]


# -- metrics options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:9472", ("127.0.0.1", 9472)), (":9472", ("0.0.0.0", 9472)),
                                            ("[::1]:9", ("::1", 9))])
def test_metrics_address(text, want):
    from pycni.metrics import parse_address

    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["9472", "host:", "host:http", "a:70000"])
def test_metrics_address_refused(text):
    from pycni.metrics import parse_address

    with pytest.raises(ValueError):
        parse_address(text)


# -- pools, conf dirs ----------------------------------------------------------------------------------


def test_capacity_leaves_out_the_gateway_only_when_it_is_in_the_range():
    assert pools.capacity(Range.build("10.1.0.0/24")) == 253
    assert pools.capacity(Range.build("10.1.0.0/24", "10.1.0.10", "10.1.0.19")) == 10
    assert pools.capacity(Range.build("10.1.0.0/24", "10.1.0.1", "10.1.0.10")) == 9
    assert pools.capacity(Range.build("fd00::/120")) == 254  # ::1-::ff (no broadcast in IPv6) less the gateway


def test_pool_usage_counts_lease_names_per_range(tmp_path):
    pool = pools.from_ipam("net", {"type": "host-local", "dataDir": str(tmp_path),
                                   "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]]})
    (tmp_path / "net").mkdir()
    for name in ("10.1.0.2", "10.1.0.3", "fd00::2", "last_reserved_ip.0", "lock", "010.1.0.4"):
        (tmp_path / "net" / name).write_text("x")
    assert [(u.range, u.leased, u.capacity) for u in pools.usage(pool)] == [
        ("10.1.0.1-10.1.0.254", 2, 253), ("fd00::1-fd00::ff", 1, 254)]
    # decoded by host-local's own rules (ipam/config.py): what the plugin refuses is no pool
    assert pools.from_ipam("net", {"type": "host-local", "ranges": [[{"subnet": "nonsense"}]]}) is None
    assert pools.from_ipam("net", {"ranges": [[{"subnet": "10.1.0.0/24"}]]}) is None  # no type (SPEC.md Section 1)
    assert pools.from_ipam("net", {"type": "host-local", "dataDir": "relative",
                                   "ranges": [[{"subnet": "10.1.0.0/24"}]]}) is None
    assert pools.from_ipam("net", {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}],
                                                                   [{"subnet": "10.1.0.0/25"}]]}) is None  # overlap


def test_conf_dir_finds_pycni_networks_first_file_wins(tmp_path):
    (tmp_path / "10-a.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "a", "plugins": [
        {"type": "loopback"}, {"type": "pycni", "bridge": "br9", "ipam": {"type": "pycni-host-local"}}]}))
    (tmp_path / "20-a.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "a", "type": "pycni"}))
    (tmp_path / "30-b.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "b", "type": "bridge"}))
    (tmp_path / "40-bad.conflist").write_text("{")
    found = netconfs.load(str(tmp_path))
    assert [(n.name, n.bridge, n.source.endswith("10-a.conflist")) for n in found.networks] == [("a", "br9", True)]
    assert len(found.problems) == 1 and "40-bad" in found.problems[0]
    gc = found.networks[0].gc_config([("c2", "eth0"), ("c1", "eth0")])
    assert gc["cniVersion"] == "1.1.0" and gc["name"] == "a"
    assert gc["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"},
                                               {"containerID": "c2", "ifname": "eth0"}]


def test_gc_valid_list_by_id_or_by_exact_attachment():
    by_id = gc_preview.Valid(ids={"c1"})
    assert ("c1", "eth0") in by_id and ("c1", "net1") in by_id and ("c2", "eth0") not in by_id
    exact = gc_preview.Valid(pairs={("c1", "eth0")})
    assert ("c1", "eth0") in exact and ("c1", "net1") not in exact
    assert gc_preview.Valid(ids=set()).empty() and not exact.empty()


def test_age_is_kubectl_style():
    assert [output.age(s) for s in (5, 125, 7300, 90000, None)] == ["5s", "2m", "2h", "1d", "-"]


def test_agent_state_keeps_totals_across_restarts(tmp_path):
    from pycni.agent.routes import Plan, Route

    path = str(tmp_path / "agent.json")
    runstate.AgentState(path).record({"node": "n", "errors": ["x"]}, Plan(delete=[Route("10.9.0.0/24", "1.2.3.4")]))
    state = runstate.AgentState(path)
    state.record({"node": "n", "errors": []}, Plan())
    doc = runstate.read(path)
    assert doc["totals"] == {"rounds": 2, "failedRounds": 1, "routesAdded": 0, "routesRemoved": 1, "routesReplaced": 0}
    assert doc["lastRound"]["errors"] == [] and doc["node"] == "n"


# -- logs ----------------------------------------------------------------------------------------------


def test_json_formatter_always_has_the_request_keys():
    record = logging.LogRecord("pycni", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    doc = json.loads(logfmt.JsonFormatter().format(record))
    assert doc["msg"] == "hello x" and doc["level"] == "warning"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    assert {k: doc[k] for k in ("verb", "containerID", "network", "ifname", "code", "duration_ms")} == dict.fromkeys(
        ("verb", "containerID", "network", "ifname", "code", "duration_ms"))


def _ipam_conf(tmp_path, **extra) -> dict:
    return {"cniVersion": "1.0.0", "name": "lognet", "type": "pycni-host-local",
            "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.5.0.0/24"}]], "dataDir": str(tmp_path)},
            **extra}


def test_log_format_json_one_object_per_line_with_the_request(tmp_path):
    env = {"PYCNI_NO_DAEMON": "1", "PYCNI_LOG_LEVEL": "INFO"}
    res = exec_plugin("pycni-host-local", "DEL", _ipam_conf(tmp_path, logFormat="json"), container_id="c-log",
                      ifname="eth7", extra_env=env)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stderr.splitlines()]
    assert lines, res.stderr
    last = lines[-1]
    assert (last["verb"], last["containerID"], last["network"], last["ifname"], last["code"]) == \
        ("DEL", "c-log", "lognet", "eth7", 0)
    assert last["duration_ms"] >= 0 and last["level"] == "info"
    # an error: the environment chooses the format (no config to read it from), the code is the CNI code
    bad = exec_plugin("pycni-host-local", "ADD", _ipam_conf(tmp_path, ipam={"type": "pycni-host-local"}),
                      container_id="c-bad", netns="/nonexistent", extra_env={**env, "PYCNI_LOG_FORMAT": "json"})
    assert bad.returncode == 1 and bad.json["code"] == 7
    lines = [json.loads(line) for line in bad.stderr.splitlines()]
    assert lines[-1]["code"] == 7 and lines[-1]["containerID"] == "c-bad"
    assert any(x["level"] == "warning" and "code 7" in x["msg"] for x in lines)


def test_plain_log_format_is_unchanged(tmp_path):
    res = exec_plugin("pycni-host-local", "ADD", _ipam_conf(tmp_path, ipam={"type": "pycni-host-local"}),
                      container_id="c-plain", netns="/nonexistent", extra_env={"PYCNI_NO_DAEMON": "1"})
    assert res.returncode == 1
    (line,) = res.stderr.splitlines()  # WARNING by default: the error line only
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ WARNING pycni: pycni-host-local failed: code 7: .*",
                        line), line


def test_unknown_log_format_is_a_config_error(tmp_path):
    res = exec_plugin("pycni-host-local", "DEL", _ipam_conf(tmp_path, logFormat="xml"), extra_env={"PYCNI_NO_DAEMON": "1"})
    assert res.returncode == 1 and res.json["code"] == 7 and "logFormat" in res.json["details"]


def test_cold_path_never_imports_prometheus_client(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "coldnet", "type": "pycni", "bridge": "cni0",
            "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.6.0.0/24"}]], "dataDir": str(tmp_path)}}
    spool.ensure(str(tmp_path / "none.sock"))  # a daemon ran here once
    proc, modules = imports_of("DEL", conf, CNI_CONTAINERID="gone-1", CNI_IFNAME="eth0", CNI_PATH="/nonexistent",
                               PYCNI_SOCKET=str(tmp_path / "none.sock"), PYCNI_NO_DAEMON="0")
    assert proc.returncode == 0, proc.stderr
    assert spool.drain(str(tmp_path / "none.sock")) == [("pycni", "DEL", "absent")]  # recorded (cheaply)...
    assert not {m for m in modules if m.startswith(("prometheus_client", "pycni.metrics", "pycni.inspect"))}
