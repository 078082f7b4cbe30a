#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of what a request can reach without a kernel:
the protocol layer and the lease store. Issue 15: "any input that yields code 100, a traceback, or a
changed store is a failure".

Targets (`fuzz.py TARGET [libFuzzer flags...]`, e.g. `-max_total_time=600`):

  protocol  runner.run() on an environment and a stdin built from the input, for both plugins and every
            verb, with the verbs replaced by what they decode and validate before touching anything
            (configuration, prevResult, IPAM ranges and requested addresses, GC lists, CNI_ARGS) - so
            the whole decoding path runs, nothing else; plus the daemon's request decoding. Must hold:
            exactly one JSON document (a result or an error object with a spec code other than 100),
            the exit status matching it, no traceback in the logs.
  store     pycni-host-local ADD / DEL / CHECK / GC, in-process, on a lease store seeded from the input
            with odd entries (garbage and empty leases, directories named like addresses or like our
            temporaries, symlinks out of the store, FIFOs, garbage cursors), with and without the
            daemon's in-memory view. Must hold: no code 100, no traceback; nothing outside the network
            directory changes; a failed verb changes nothing (apart from the documented repairs:
            dead writers' temporaries and empty lease files); a successful one changes only the leases
            of its own attachment (ADD, DEL) or of attachments not in the list (GC).

A finding makes libFuzzer stop with the input saved as crash-<sha1> in the working directory:
`fuzz.py TARGET crash-<sha1>` replays it; once fixed, it goes into tests/fuzz_corpus/TARGET/ and every run
starts with it. tests/test_fuzz.py runs both targets briefly in the test suite (with a fixed seed);
`make stress` runs them longer (FUZZ_SECONDS), keeping the corpus in build/fuzz/ between runs.
PYCNI_FUZZ_WORK: the directory the store target works in (default: a new temporary directory).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

SUBNET = "10.9.0.0/28"
NET = "fuzznet"
FIELD_SEP = b"\x1f"


# -- seeds ------------------------------------------------------------------------------------------------


def _head(*fields: str) -> bytes:
    return FIELD_SEP.join(f.encode() for f in fields) + b"\n"


def protocol_seeds() -> list[bytes]:
    bridge = {"cniVersion": "1.1.0", "name": "net1", "type": "pycni", "bridge": "cni0", "isGateway": True,
              "ipMasq": True, "ipam": {"type": "pycni-host-local", "dataDir": "/nonexistent/fuzz",
                                       "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}],
                                                  [{"subnet": "fd00::/64"}]],
                                       "routes": [{"dst": "0.0.0.0/0", "mtu": 1400, "priority": 5}]}}
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "table": 7}], "dns": {"nameservers": ["10.1.0.1"]}}
    hl = {"cniVersion": "1.0.0", "name": "net2", "type": "pycni-host-local",
          "ipam": {"type": "pycni-host-local", "subnet": "10.2.0.0/16", "rangeStart": "10.2.0.10",
                   "rangeEnd": "10.2.0.20", "dataDir": "/nonexistent/fuzz"},
          "runtimeConfig": {"ipRanges": [[{"subnet": "10.3.0.0/24"}]], "ips": ["10.3.0.7/24"]},
          "args": {"cni": {"ips": ["10.2.0.11"]}}}
    gc = dict(bridge, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    return [
        b"b" + FIELD_SEP + _head("ADD", "ctr1", "eth0", "/var/run/netns/x", "IP=10.1.0.9", "/opt/cni/bin")
        + json.dumps(bridge).encode(),
        b"b" + FIELD_SEP + _head("CHECK", "ctr1", "eth0", "/var/run/netns/x", "", "/opt/cni/bin")
        + json.dumps(dict(bridge, prevResult=prev)).encode(),
        b"b" + FIELD_SEP + _head("GC", "", "", "", "", "/opt/cni/bin") + json.dumps(gc).encode(),
        b"h" + FIELD_SEP + _head("ADD", "c", "net1", "/x", "IgnoreUnknown=1;K8S_POD_NAME=a", "/bin")
        + json.dumps(hl).encode(),
        b"h" + FIELD_SEP + _head("DEL", "c", "net1", "", "", "/bin")
        + json.dumps(dict(hl, logFormat="json", logLevel="DEBUG")).encode(),
        b"h" + FIELD_SEP + _head("VERSION", "", "", "", "", "") + b'{"cniVersion": "0.4.0"}',
        b"d" + FIELD_SEP + b"\n" + json.dumps({"proto": 2, "version": "0.1.0", "plugin": "pycni", "deadline": 5,
                                               "env": {"CNI_COMMAND": "DEL"}, "stdin": "e30="}).encode(),
    ]


def store_seeds() -> list[bytes]:
    return [
        _head("ADD", "ctr1", "eth0", "", "", "1") + b"f 10.9.0.2 other\r\neth0\ne 10.9.0.3\nd .pycni-tmp-x\n",
        _head("DEL", "ctr1", "eth0", "", "", "0") + b"f 10.9.0.2 ctr1\r\neth0\nf 10.9.0.4 ctr1\nd 10.9.0.5\n",
        _head("GC", "", "", "", "ctr1/eth0,x/y", "1") + b"f 10.9.0.2 ctr1\r\neth0\nf 10.9.0.3 gone\r\neth1\n"
        b"l 10.9.0.6 ../../victim\np 10.9.0.7\nc 0 10.9.0.3\n",
        _head("ADD", "ctr2", "eth1", "IP=10.9.0.9", "", "0") + b"f .pycni-tmp-1-10.9.0.9 ctr9\nc 0 garbage\n",
        _head("CHECK", "ctr1", "eth0", "", "", "1") + b"f 10.9.0.2 ctr1\r\neth0\n",
    ]


# -- invariants shared by both targets ----------------------------------------------------------------------


class Finding(AssertionError):
    pass


def check_answer(status: int, text: str, logs: str) -> dict | None:
    if "Traceback" in logs:
        raise Finding(f"traceback in the logs:\n{logs[-3000:]}")
    if status == 0:
        return json.loads(text) if text else None
    try:
        doc = json.loads(text)
    except ValueError:
        raise Finding(f"exit {status} without one JSON document: {text!r}") from None
    code = doc.get("code")
    if not isinstance(code, int) or code <= 0 or code == 100 or set(doc) - {"cniVersion", "code", "msg", "details"}:
        raise Finding(f"bad error document: {doc}\n{logs[-3000:]}")
    return doc


# -- protocol ---------------------------------------------------------------------------------------------


def _decode_only_verbs() -> None:
    """Replace every verb by what it decodes and validates before it touches anything."""
    from pycni.bridge import ipam_delegate
    from pycni.bridge import verbs as bridge
    from pycni.ipam import verbs as hostlocal
    from pycni.ipam.config import ipam_config
    from pycni.spec.gc import valid_attachments
    from pycni.spec.result import Result

    def bridge_verb(req):
        req.conf.prev_result()
        req.conf.container_mac(req.cni_args.get("MAC"))
        ipam_delegate.precheck(req)
        if req.env.command == "GC":
            valid_attachments(req.raw)
        return Result()

    def hostlocal_verb(req):
        ipam_config(req.conf, req.cni_args)
        req.conf.prev_result()
        if req.env.command == "GC":
            valid_attachments(req.raw)
        return Result()

    for module, verb in ((bridge, bridge_verb), (hostlocal, hostlocal_verb)):
        for name in ("add", "delete", "check", "status", "gc"):
            setattr(module, name, verb)


def protocol_one(data: bytes) -> None:
    import io

    from pycni import runner
    from pycni.daemon.wire import Refused, check_request

    head, _, stdin = data.partition(b"\n")
    fields = head.split(FIELD_SEP)
    kind = fields[0][:1]
    if kind == b"d":  # the daemon's request decoding: a request or a refusal, nothing else
        try:
            req = json.loads(stdin.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return
        try:
            check_request(req)
        except Refused:
            pass
        return
    plugin = "pycni-host-local" if kind == b"h" else "pycni"
    names = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS", "CNI_PATH")
    environ = {}
    for name, value in zip(names, fields[1:]):
        text = value.decode("utf-8", "surrogateescape")
        if value and "\x00" not in text:
            environ[name] = text
    logs = io.StringIO()
    status, text = runner.run(plugin, environ, stdin, stderr=logs)
    check_answer(status, text, logs.getvalue())


# -- store ------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = path.read_bytes()
            else:
                out[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", stat.S_IFMT(st.st_mode))
    return out


def _seed_store(netdir: Path, lines: list[bytes]) -> None:
    netdir.mkdir(parents=True)
    for line in lines[:40]:
        op, _, rest = line.partition(b" ")
        name_b, _, content = rest.partition(b" ")
        name = name_b.decode("utf-8", "replace").replace("\x00", "")
        if not name or "/" in name or name in (".", "..") or len(name.encode()) > 200:
            continue  # not a name a directory can hold (the seeding, not the store, would fail)
        path = netdir / name
        if os.path.lexists(path):
            continue
        content = content.replace(b"\\r\\n", b"\r\n")
        if op == b"f":
            path.write_bytes(content[:5000])
        elif op == b"e":
            path.write_bytes(b"")
        elif op == b"d":
            path.mkdir()
        elif op == b"l":
            path.symlink_to(content.decode("utf-8", "replace").replace("\x00", "") or "x")
        elif op == b"p":
            os.mkfifo(path)
        elif op == b"c":
            (netdir / f"last_reserved_ip.{name[:3]}").write_bytes(content[:200])


def _owner(content: object) -> tuple[str, str] | None:
    if not isinstance(content, bytes):
        return None
    try:
        lines = content.decode("utf-8").strip().split("\r\n")
    except UnicodeDecodeError:
        return None
    return (lines[0].strip(), lines[1].strip() if len(lines) > 1 else "")


def _is_repair(name: str, before: dict, after: dict) -> bool:
    """Changes by design: dead writers' temporaries go, empty lease files are reclaimed, and the
    store's skeleton (its directory, the lock file) is created when missing."""
    base = name.rsplit("/", 1)[-1]
    if name in (f"ipam/{NET}", "ipam") or (base == "lock" and name not in before):
        return True
    if base.startswith(".pycni-tmp-") and before.get(name) is not None and not isinstance(before.get(name), tuple):
        return True
    old = before.get(name)
    return isinstance(old, bytes) and not old.strip() and (name not in after or isinstance(after.get(name), bytes))


_LEASES = []


def _lease_cache():
    """One lease cache for the whole run, as a daemon worker keeps one for its life."""
    from pycni.ipam.store import LeaseCache

    if not _LEASES:
        _LEASES.append(LeaseCache())
    return _LEASES[0]


def store_one(data: bytes, work: Path) -> None:
    import io

    from pycni import runner
    from pycni.context import Context

    head, _, body = data.partition(b"\n")
    fields = [f.decode("utf-8", "replace").replace("\x00", "") for f in head.split(FIELD_SEP)] + [""] * 6
    verb, cid, ifname, args, valid, cache = fields[:6]
    verb = verb if verb in ("ADD", "DEL", "CHECK", "GC") else "ADD"
    shutil.rmtree(work, ignore_errors=True)
    data_dir, netdir, victim = work / "ipam", work / "ipam" / NET, work / "victim"
    victim.mkdir(parents=True)
    (victim / "secret").write_text("do not touch\n")
    _seed_store(netdir, body.split(b"\n"))
    # "1": as in the daemon, with a lease cache that lives across inputs (pycni.context.Context)
    context = Context(leases=_lease_cache()) if cache == "1" else None
    conf: dict = {"cniVersion": "1.1.0", "name": NET, "type": "pycni-host-local",
                  "ipam": {"type": "pycni-host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": SUBNET}]]}}
    attachments = []
    for item in valid.split(",") if valid else []:
        c, _, i = item.partition("/")
        attachments.append({"containerID": c, "ifname": i})
    if verb == "GC":
        conf["cni.dev/valid-attachments"] = attachments
    environ = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid or "ctr", "CNI_IFNAME": ifname or "eth0",
               "CNI_NETNS": "/var/run/netns/fuzz", "CNI_PATH": "/opt/cni/bin"}
    if args:
        environ["CNI_ARGS"] = args
    before = snapshot(work)
    logs = io.StringIO()
    status, text = runner.run("pycni-host-local", environ, json.dumps(conf).encode(), stderr=logs, context=context)
    check_answer(status, text, logs.getvalue())
    after = snapshot(work)
    outside = {k for k in set(before) | set(after) if not k.startswith(f"ipam/{NET}/") and k != f"ipam/{NET}"}
    if any(before.get(k) != after.get(k) for k in outside):
        raise Finding(f"{verb} changed files outside the network directory")
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in outside)
    changed = [k for k in changed if not _is_repair(k, before, after)]
    leases = [k for k in changed if _is_address(k.rsplit("/", 1)[-1])]
    others = [k for k in changed if k not in leases]
    if status != 0 or verb == "CHECK":
        if changed:
            raise Finding(f"{verb} ({'failed' if status else 'CHECK'}) changed the store: {changed}\n{text}")
        return
    if any(not k.rsplit("/", 1)[-1].startswith("last_reserved_ip.") for k in others):
        raise Finding(f"{verb} changed non-lease files: {others}")
    me = (environ["CNI_CONTAINERID"], environ["CNI_IFNAME"])
    keep = {(a["containerID"], a["ifname"]) for a in attachments}
    for k in leases:
        old, new = before.get(k), after.get(k)
        if verb == "ADD" and not (old is None and _owner(new) == me):
            raise Finding(f"ADD changed {k}: {old!r} -> {new!r}")
        if verb == "DEL" and not (new is None and _owner(old) is not None and _owner(old)[0] == me[0]):
            raise Finding(f"DEL removed {k} ({old!r}), not a lease of {me}")
        if verb == "GC" and not (new is None and _owner(old) not in keep):
            raise Finding(f"GC changed {k}: {old!r} -> {new!r} (keep {keep})")


def _is_address(name: str) -> bool:
    try:
        return str(ipaddress.ip_address(name)) == name
    except ValueError:
        return False


# -- entry point --------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in ("protocol", "store"):
        raise SystemExit("usage: fuzz.py protocol|store [libFuzzer flags and corpus directories...]")
    target = argv[1]
    with atheris.instrument_imports(include=["pycni"], enable_loader_override=False):
        import pycni.bridge.verbs
        import pycni.daemon.server
        import pycni.ipam.store
        import pycni.ipam.verbs
        import pycni.runner
        import pycni.spec.result  # noqa: F401
    import logging

    logging.getLogger("pycni").propagate = False
    flags = [a for a in argv[2:] if a.startswith("-")]
    paths = [a for a in argv[2:] if not a.startswith("-")]
    if not any(Path(p).is_file() for p in paths):  # fuzzing (not replaying a crash): seed a corpus
        corpus = Path(paths[0]) if paths else Path(tempfile.mkdtemp(prefix=f"pycni-fuzz-{target}-"))
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(protocol_seeds() if target == "protocol" else store_seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
        for found in sorted((Path(__file__).resolve().parent / "fuzz_corpus" / target).glob("*")):
            (corpus / f"regression-{found.name}").write_bytes(found.read_bytes())  # past findings, run first
        paths = [str(corpus), *paths[1:]]
    if target == "protocol":
        _decode_only_verbs()
        one = protocol_one
    else:
        work = Path(os.environ.get("PYCNI_FUZZ_WORK") or tempfile.mkdtemp(prefix="pycni-fuzz-store-")) / "store"

        def one(data: bytes) -> None:
            store_one(data, work)

    atheris.Setup([argv[0], *flags, *paths], one)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main(sys.argv)
