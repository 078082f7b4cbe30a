"""The node agent's pure parts (no root): node sources, conflist rendering, route planning, masquerade
rendering, bundle install into a temp dir, and the in-cluster API client against a local HTTPS server."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from pycni.agent import conflist, install, masq, routes
from pycni.agent.main import parse_args
from pycni.agent.nodes import (
    FileSource,
    KubeClient,
    KubeSource,
    Node,
    NodeSourceError,
    parse_k8s_node_list,
    parse_nodes_file,
)

# -- nodes file -------------------------------------------------------------------------------------


def test_nodes_file_basic_and_dual_stack():
    nl = parse_nodes_file(json.dumps([
        {"name": "n1", "address": "172.30.0.2", "podCIDRs": ["10.244.1.0/24"]},
        {"name": "n2", "address": ["172.30.0.3", "fd00::3"], "podCIDRs": ["10.244.2.0/24", "fd10:2::/64"]},
        {"name": "n3", "address": "172.30.0.4", "podCIDR": "10.244.3.0/24"},
        {"name": "n4", "address": "172.30.0.5"},
    ]))
    assert [n.name for n in nl.nodes] == ["n1", "n2", "n3", "n4"]
    assert nl.get("n2") == Node("n2", ("172.30.0.3", "fd00::3"), ("10.244.2.0/24", "fd10:2::/64"))
    assert nl.get("n2").address_for(6) == "fd00::3" and nl.get("n1").address_for(6) is None
    assert nl.get("n3").pod_cidrs == ("10.244.3.0/24",)
    assert nl.get("n4").pod_cidrs == ()
    assert nl.version and nl.version != parse_nodes_file("[]").version
    # an object with a "nodes" key is accepted too
    assert parse_nodes_file('{"nodes": [{"name": "a", "address": "10.0.0.1"}]}').nodes[0].name == "a"


@pytest.mark.parametrize("doc,msg", [
    ("not json", "not valid JSON"),
    ('{"a": 1}', "must be a JSON list"),
    ('[1]', "must be an object"),
    ('[{"address": "10.0.0.1"}]', "'name'"),
    ('[{"name": "a"}, {"name": "a"}]', "duplicate"),
    ('[{"name": "a", "address": "300.0.0.1"}]', "invalid address"),
    ('[{"name": "a", "podCIDRs": ["10.244.1.1/24"]}]', "invalid pod CIDR"),
    ('[{"name": "a", "podCIDRs": [7]}]', "must be a string"),
    ('[{"name": "a", "podCIDRs": ["10.1.0.0/24", "10.2.0.0/24"]}]', "one pod CIDR per IP family"),
])
def test_nodes_file_errors(doc, msg):
    with pytest.raises(NodeSourceError, match=msg):
        parse_nodes_file(doc)


def test_file_source_reads_and_reports(tmp_path):
    f = tmp_path / "nodes.json"
    src = FileSource(str(f))
    with pytest.raises(NodeSourceError, match="cannot read"):
        src.list()
    f.write_text('[{"name": "n1", "address": "10.0.0.1", "podCIDRs": ["10.244.1.0/24"]}]')
    assert src.list().get("n1").addresses == ("10.0.0.1",)


# -- Kubernetes NodeList ----------------------------------------------------------------------------

NODELIST = {
    "kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "1234"},
    "items": [
        {"metadata": {"name": "kind-control-plane"},
         "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"},
                                  {"type": "Hostname", "address": "kind-control-plane"}]}},
        {"metadata": {"name": "kind-worker"},
         "spec": {"podCIDR": "10.244.1.0/24"},  # older API server: only the singular field
         "status": {"addresses": [{"type": "ExternalIP", "address": "1.2.3.4"},
                                  {"type": "InternalIP", "address": "172.18.0.2"},
                                  {"type": "InternalIP", "address": "fc00:f853:ccd:e793::2"}]}},
        {"metadata": {"name": "kind-worker2"}, "spec": {}, "status": {}},  # no podCIDR allocated yet
        {"metadata": {"name": "broken"}, "spec": {"podCIDRs": ["nonsense"]}},
    ],
}


def test_k8s_node_list():
    nl = parse_k8s_node_list(NODELIST)
    assert nl.version == "1234"
    assert [n.name for n in nl.nodes] == ["kind-control-plane", "kind-worker", "kind-worker2"]
    assert nl.get("kind-control-plane") == Node("kind-control-plane", ("172.18.0.3",), ("10.244.0.0/24",))
    assert nl.get("kind-worker").addresses == ("172.18.0.2", "fc00:f853:ccd:e793::2")
    assert nl.get("kind-worker").pod_cidrs == ("10.244.1.0/24",)
    assert nl.get("kind-worker2").pod_cidrs == ()
    assert len(nl.errors) == 1 and "broken" in nl.errors[0]
    with pytest.raises(NodeSourceError):
        parse_k8s_node_list({"kind": "PodList", "items": []})


# -- routes -----------------------------------------------------------------------------------------


def _nodes():
    return [
        Node("n1", ("172.30.0.2", "fd00::2"), ("10.244.1.0/24", "fd10:1::/64")),
        Node("n2", ("172.30.0.3", "fd00::3"), ("10.244.2.0/24", "fd10:2::/64")),
        Node("n3", ("172.30.0.4",), ("10.244.3.0/24", "fd10:3::/64")),  # no IPv6 address
        Node("n4", ("172.30.0.5",), ()),                                # no pod CIDR yet
        Node("n5", ("172.30.0.6",), ("10.244.1.128/25",)),              # overlaps n1's
    ]


def test_desired_routes():
    d = routes.desired(_nodes(), "n1")
    assert d.routes == {"10.244.2.0/24": "172.30.0.3", "fd10:2::/64": "fd00::3", "10.244.3.0/24": "172.30.0.4"}
    assert any("n3" in p and "IPv6" in p for p in d.problems)
    assert any("n5" in p and "overlaps" in p for p in d.problems)
    # from n2's point of view n1 and n5 clash; the first in name order wins
    d2 = routes.desired(_nodes(), "n2")
    assert d2.routes["10.244.1.0/24"] == "172.30.0.2" and "10.244.1.128/25" not in d2.routes
    # a node missing from the list still routes to everyone else
    assert routes.desired(_nodes()[1:2], "gone").routes == {"10.244.2.0/24": "172.30.0.3", "fd10:2::/64": "fd00::3"}


def test_plan_add_replace_delete():
    current = {"10.244.2.0/24": "172.30.0.3", "10.244.3.0/24": "172.30.0.9", "10.244.7.0/24": "172.30.0.7"}
    want = {"10.244.2.0/24": "172.30.0.3", "10.244.3.0/24": "172.30.0.4", "10.244.4.0/24": "172.30.0.5"}
    p = routes.plan(current, want)
    assert p.add == [routes.Route("10.244.4.0/24", "172.30.0.5")]
    assert p.replace == [routes.Route("10.244.3.0/24", "172.30.0.4")]
    assert p.delete == [routes.Route("10.244.7.0/24", "172.30.0.7")]
    assert not p.empty() and "replace 10.244.3.0/24 via 172.30.0.4" in str(p)
    assert routes.plan(want, want).empty()
    assert routes.plan(current, {}).delete == sorted(routes.Route(d, v) for d, v in current.items())


def test_route_protocol_is_unassigned():
    reserved = {0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 42, 99, 186, 187, 188, 189, 192}
    assert routes.RTPROT_PYCNI not in reserved and 0 < routes.RTPROT_PYCNI < 256


# -- conflist ---------------------------------------------------------------------------------------


def test_conflist_single_stack():
    c = conflist.render(["10.244.1.0/24"])
    assert c["cniVersion"] == "1.0.0" and c["name"] == "pycni"
    bridge, portmap = c["plugins"]
    assert bridge["type"] == "pycni" and bridge["bridge"] == "cni0"
    assert bridge["isGateway"] and bridge["isDefaultGateway"] and bridge["hairpinMode"]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"] == {"type": "pycni-host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                              "dataDir": "/var/lib/cni/networks"}
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_conflist_dual_stack_and_options():
    c = conflist.render(["fd10:1::/64", "10.244.1.0/24"], cni_version="1.1.0", mtu=1400, bridge="br9",
                        data_dir="/run/x", portmap=False, log_file="/tmp/l")
    assert c["cniVersion"] == "1.1.0" and len(c["plugins"]) == 1
    b = c["plugins"][0]
    assert b["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd10:1::/64"}]]
    assert b["mtu"] == 1400 and b["bridge"] == "br9" and b["ipam"]["dataDir"] == "/run/x" and b["logFile"] == "/tmp/l"


def test_conflist_validates_with_the_plugin_models():
    """What the agent writes is a config the bridge plugin and the IPAM accept."""
    from pycni.bridge.config import Config as BridgeConfig
    from pycni.spec import config as netconf

    c = conflist.render(["10.244.1.0/24", "fd10:1::/64"])
    plugin = dict(c["plugins"][0], cniVersion=c["cniVersion"], name=c["name"])
    conf = netconf.load(BridgeConfig, plugin)
    assert conf.isDefaultGateway and not conf.ipMasq


@pytest.mark.parametrize("bad", [[], ["10.1.0.0/24", "10.2.0.0/24"], ["10.1.0.1/24"]])
def test_conflist_rejects(bad):
    with pytest.raises(ValueError):
        conflist.render(bad)


def test_write_atomic(tmp_path):
    p = tmp_path / "net.d" / "10-pycni.conflist"
    assert conflist.write_atomic(str(p), "one\n") is True
    ino = p.stat().st_ino
    assert conflist.write_atomic(str(p), "one\n") is False and p.stat().st_ino == ino  # untouched
    assert conflist.write_atomic(str(p), "two\n") is True
    assert p.read_text() == "two\n" and p.stat().st_ino != ino  # a new file renamed over the old
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(p.parent)) == ["10-pycni.conflist"]  # no temp file left


# -- masquerade rendering ---------------------------------------------------------------------------


def test_masq_nft_render():
    text = masq.render_nft(masq.MasqSpec(("10.244.1.0/24", "fd10:1::/64"), ("10.244.0.0/16", "fd10::/56")))
    lines = text.splitlines()
    assert lines[1:4] == ["add table inet pycni-agent", "delete table inet pycni-agent", "table inet pycni-agent {"]
    assert "elements = { 10.244.1.0/24 }" in text and "elements = { fd10::/56, ff00::/8 }" in text
    assert "elements = { 10.244.0.0/16, 224.0.0.0/4, 255.255.255.255/32 }" in text
    assert "ip saddr @pods4 ip daddr != @cluster4 counter masquerade" in text
    assert "ip6 saddr @pods6 ip6 daddr != @cluster6 counter masquerade" in text
    assert "type nat hook postrouting priority srcnat" in text
    v4only = masq.render_nft(masq.MasqSpec(("10.244.1.0/24", "fd10:1::/64"), ("10.244.0.0/16",)))
    assert "pods6" not in v4only and "@pods4" in v4only


def test_masq_iptables_render():
    text = masq.render_iptables_chain(["10.244.0.0/16"])
    assert text.splitlines() == ["*nat", ":PYCNI-AGENT-MASQ - [0:0]", "-A PYCNI-AGENT-MASQ -d 10.244.0.0/16 -j RETURN",
                                 "-A PYCNI-AGENT-MASQ -d 224.0.0.0/4 -j RETURN",
                                 "-A PYCNI-AGENT-MASQ -d 255.255.255.255/32 -j RETURN",
                                 "-A PYCNI-AGENT-MASQ -j MASQUERADE", "COMMIT"]
    assert "-d ff00::/8 -j RETURN" in masq.render_iptables_chain(["fd10::/56"], 6)
    assert masq.jump_rule("10.244.1.0/24") == ["-s", "10.244.1.0/24", "-m", "comment", "--comment", "pycni-agent",
                                              "-j", "PYCNI-AGENT-MASQ"]
    assert masq.backend("none").name == "none"


# -- bundle install ---------------------------------------------------------------------------------


def _fake_bundle(d: Path, version: str) -> Path:
    (d / "pycni.d" / "bin").mkdir(parents=True)
    (d / "pycni.d" / "BUILDINFO").write_text(version)
    (d / "pycni.d" / "bin" / "python3").write_text("#!/bin/sh\n")
    for exe in ("pycni", "pycni-host-local"):
        (d / exe).write_text(f"#!/bin/sh\necho {version}\n")
        (d / exe).chmod(0o755)
    return d


def test_install_only_when_changed(tmp_path):
    src = _fake_bundle(tmp_path / "src", "v1")
    dest = tmp_path / "opt-cni-bin"
    dest.mkdir()
    (dest / "loopback").write_text("other plugin")
    assert install.install(str(src), str(dest)) is True
    assert (dest / "pycni").read_text().endswith("v1\n") and os.access(dest / "pycni", os.X_OK)
    assert (dest / "pycni.d" / "BUILDINFO").read_text() == "v1"
    assert install.installed_digest(str(dest)) == install.digest(str(src))
    assert install.install(str(src), str(dest)) is False          # same content: nothing copied
    (src / "pycni.d" / "BUILDINFO").write_text("v2")
    assert install.install(str(src), str(dest)) is True           # changed: swapped in
    assert (dest / "pycni.d" / "BUILDINFO").read_text() == "v2"
    assert (dest / "loopback").read_text() == "other plugin"      # neighbours untouched
    assert sorted(os.listdir(dest)) == [".pycni-install.lock", "loopback", "pycni", "pycni-host-local",
                                        "pycni.d"]  # no temp dirs left
    shutil.rmtree(dest / "pycni.d")                               # damaged install is repaired
    assert install.install(str(src), str(dest)) is True
    assert install.install(str(dest), str(dest)) is False         # running from the install itself
    with pytest.raises(install.InstallError, match="not a pycni bundle"):
        install.install(str(tmp_path), str(dest))


# -- arguments --------------------------------------------------------------------------------------


def test_args(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "n7")
    a = parse_args(["--nodes-file", "/x", "--cluster-cidr", "10.244.0.0/16,fd10::/56", "--once"])
    assert a.node_name == "n7" and a.cluster_cidr == ["10.244.0.0/16", "fd10::/56"] and a.once
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "a", "--cluster-cidr", "10.0.0.0/8"])  # no node source
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "a", "--nodes-file", "/x", "--kube", "--cluster-cidr", "10.0.0.0/8"])
    monkeypatch.delenv("CLUSTER_CIDR", raising=False)
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "a", "--nodes-file", "/x"])  # masquerade needs the cluster CIDR
    assert parse_args(["--node-name", "a", "--nodes-file", "/x", "--masq-backend", "none"]).cluster_cidr == []


# -- the in-cluster API client, against a local HTTPS server (127.0.0.1 only) ---------------------------


@pytest.fixture
def fake_apiserver(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a test certificate")
    sa = tmp_path / "sa"
    sa.mkdir()
    key, crt = tmp_path / "key.pem", sa / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    (sa / "token").write_text("tok-1\n")
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization", "")))
            if self.headers.get("Authorization") != f"Bearer {(sa / 'token').read_text().strip()}":
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b'{"kind":"Status","code":401}')
                return
            if "watch=1" in self.path:
                body = b'{"type":"MODIFIED","object":{"kind":"Node"}}\n'
            else:
                body = json.dumps(NODELIST).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], sa, seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_kube_client_lists_nodes_over_verified_tls(fake_apiserver):
    port, sa, seen = fake_apiserver
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    src = KubeSource(KubeClient(sa_dir=str(sa), environ=env))
    nl = src.list()
    assert nl.version == "1234" and nl.get("kind-worker").pod_cidrs == ("10.244.1.0/24",)
    assert seen[-1] == ("/api/v1/nodes", "Bearer tok-1")
    (sa / "token").write_text("tok-2")  # rotated by the kubelet: the next request uses the new one
    src.list()
    assert seen[-1][1] == "Bearer tok-2"
    stop = threading.Event()
    src.wait("1234", 5, stop)  # returns at the first watch event
    assert seen[-1][0].startswith("/api/v1/nodes?watch=1&resourceVersion=1234&timeoutSeconds=5")


def fake_401(client, sa):
    # the server compares with the token file itself, so make the client send another one
    real = client._token
    client._token = lambda: "not-" + real()
    try:
        client.get_json("/api/v1/nodes")
    finally:
        client._token = real


def test_kube_client_errors(fake_apiserver, tmp_path):
    port, sa, _ = fake_apiserver
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    with pytest.raises(NodeSourceError, match="KUBERNETES_SERVICE_HOST"):
        KubeClient(sa_dir=str(sa), environ={})
    with pytest.raises(NodeSourceError, match="cluster CA"):
        KubeClient(sa_dir=str(tmp_path / "nowhere"), environ=env)
    client = KubeClient(sa_dir=str(sa), environ=env)
    (sa / "token").write_text("wrong")
    with pytest.raises(NodeSourceError, match="HTTP 401"):
        fake_401(client, sa)
    (sa / "token").unlink()
    with pytest.raises(NodeSourceError, match="service account token"):
        client.get_json("/api/v1/nodes")
    # a CA that did not sign the server's certificate: verification fails
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(other / "k"),
                    "-out", str(other / "ca.crt"), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    (other / "token").write_text("tok")
    with pytest.raises(NodeSourceError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        KubeClient(sa_dir=str(other), environ=env).get_json("/api/v1/nodes")


def test_one_sysctl_writer_for_the_agent_and_the_bridge(tmp_path, monkeypatch):
    """pycni.sysctl writes every kernel parameter: the agent (a failure is a warning) and the bridge
    plugin (ignored, or code 101 when strict) only decide which ones and what a failure means."""
    from pycni import sysctl
    from pycni.agent import sysctl as agent_sysctl
    from pycni.bridge import sysctl as bridge_sysctl
    from pycni.spec.errors import CNIError

    monkeypatch.setattr(sysctl, "PROC_SYS", str(tmp_path))
    for path in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    assert agent_sysctl.forwarding(4) is True
    bridge_sysctl.enable_forwarding(6)
    assert (tmp_path / "net/ipv4/ip_forward").read_text() == "1"
    assert (tmp_path / "net/ipv6/conf/all/forwarding").read_text() == "1"
    assert sysctl.write("net/ipv4/ip_forward", "1") is False  # already set: not written again
    assert agent_sysctl.ensure("net/ipv4/conf/nowhere/rp_filter", "1") is False
    bridge_sysctl.write_sysctl("net/ipv4/conf/nowhere/rp_filter", "1")  # lenient: ignored
    with pytest.raises(CNIError) as err:
        bridge_sysctl.write_sysctl("net/ipv4/conf/nowhere/rp_filter", "1", strict=True)
    assert err.value.code == 101 and "rp_filter" in err.value.msg
    assert agent_sysctl.bridge_netfilter() == ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"]
