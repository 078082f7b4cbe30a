"""A damaged lease store: empty or garbage lease files, a garbage round-robin cursor, a missing or
broken lock file, a read-only data directory (a read-only bind mount: file modes do not stop root)
and a full one (a 16 KiB tmpfs). Each must give a clear error (code 5 for I/O) or be repaired, leave
no partial lease, and work again once the damage is fixed. Plugins run in a node namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import reliability as rel
from bridge_support import bridge_run_dir_cleanup

__all__ = ["bridge_run_dir_cleanup"]

NET = "dmg"
SUBNET = "10.68.0.0/24"


class Store:
    def __init__(self, lab: rel.Lab, data: Path | None = None) -> None:
        self.lab = lab
        self.node = lab.netns("node")
        self.pod = lab.netns("pod")
        self.data = data or lab.tmp / "ipam"
        self.dir = self.data / NET
        self.conf = rel.hl_conf(self.data, name=NET, subnet=SUBNET)

    def hl(self, command: str, cid: str, conf: dict | None = None) -> rel.Outcome:
        return rel.run("pycni-host-local", command, conf or self.conf, node=self.node, cid=cid,
                       netns=rel.ns_path(self.pod), ifname="eth0")

    def add_ok(self, cid: str) -> str:
        res = self.hl("ADD", cid)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.json["ips"][0]["address"].split("/")[0]

    def refused(self, res: rel.Outcome, code: int) -> dict:
        assert "Traceback" not in res.stderr, res.stderr
        assert res.returncode != 0 and res.documents == 1, res.stdout
        assert res.json["code"] == code, res.json
        return res.json


@pytest.fixture
def lab():
    lab = rel.Lab("pycnid")
    try:
        yield lab
    finally:
        lab.cleanup()


def test_empty_lease_file_is_reclaimed(lab):
    s = Store(lab)
    s.add_ok("first")  # 10.68.0.2
    (s.dir / "10.68.0.3").write_bytes(b"")  # a writer that died between create and write
    (s.dir / "last_reserved_ip.0").write_text("10.68.0.2")
    assert s.add_ok("second") == "10.68.0.3"  # reclaimed, then handed out
    assert rel.leases(s.dir) == {"10.68.0.2": ("first", "eth0"), "10.68.0.3": ("second", "eth0")}


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"a\r\nb\r\nc\r\nd", b"x" * 10000])
def test_garbage_lease_file_is_kept_until_gc(lab, content):
    s = Store(lab)
    s.add_ok("first")
    (s.dir / "10.68.0.3").write_bytes(content)
    (s.dir / "last_reserved_ip.0").write_text("10.68.0.2")
    assert s.add_ok("second") == "10.68.0.4"  # the unreadable lease keeps its address
    assert s.hl("DEL", "second").returncode == 0
    assert (s.dir / "10.68.0.3").read_bytes() == content  # DEL of someone else never touches it
    gc = rel.gc_conf(s.conf, [("first", "eth0")])
    assert rel.run("pycni-host-local", "GC", gc, node=s.node, cid=None, ifname=None).returncode == 0
    assert rel.leases(s.dir) == {"10.68.0.2": ("first", "eth0")}


@pytest.mark.parametrize("content", [b"not an ip", b"\x00\x01\x02", b"10.99.99.99", b"fd00::1", b"x" * 5000])
def test_garbage_cursor_is_ignored_and_rewritten(lab, content):
    s = Store(lab)
    s.add_ok("first")
    (s.dir / "last_reserved_ip.0").write_bytes(content)
    ip = s.add_ok("second")
    assert ip == "10.68.0.3"
    assert (s.dir / "last_reserved_ip.0").read_text() == ip


def test_missing_lock_file_is_recreated(lab):
    s = Store(lab)
    s.add_ok("first")
    (s.dir / "lock").unlink()
    assert s.add_ok("second") == "10.68.0.3"
    assert (s.dir / "lock").is_file()
    assert s.hl("DEL", "first").returncode == 0 and s.hl("DEL", "second").returncode == 0
    assert rel.leases(s.dir) == {}


def test_lock_that_cannot_be_opened_is_an_io_error(lab):
    s = Store(lab)
    s.add_ok("first")
    (s.dir / "lock").unlink()
    (s.dir / "lock").mkdir()
    before = rel.files(s.data)
    err = s.refused(s.hl("ADD", "second"), 5)
    assert "lock" in err["msg"] + err.get("details", "") or str(s.dir) in err["msg"], err
    s.refused(s.hl("DEL", "first"), 5)
    assert rel.files(s.data) == before
    (s.dir / "lock").rmdir()
    assert s.add_ok("second") == "10.68.0.3"
    assert s.hl("DEL", "first").returncode == 0


def test_read_only_data_dir(lab):
    """ADD and DEL fail with code 5 and change nothing; a bridge ADD rolls back its veth; once the
    mount is writable again everything works."""
    s = Store(lab)
    s.add_ok("first")
    lab.bind_readonly(s.data)
    before = rel.files(s.data)
    err = s.refused(s.hl("ADD", "second"), 5)
    assert "Read-only file system" in err.get("details", ""), err
    s.refused(s.hl("DEL", "first"), 5)
    bconf = rel.bridge_conf(s.data, name=NET, subnet=SUBNET, ipMasq=True)
    res = rel.run("pycni", "ADD", bconf, node=s.node, cid="bridged", netns=rel.ns_path(s.pod))
    s.refused(res, 5)
    assert rel.files(s.data) == before
    after = rel.node_links(s.node)
    assert {n for n in after if n.startswith("veth")} == set(), after
    assert rel.pod_link_names(s.pod) == ["lo"]
    lab.umount(s.data)
    assert s.add_ok("second") == "10.68.0.3"
    assert s.hl("DEL", "first").returncode == 0
    res = rel.run("pycni", "ADD", bconf, node=s.node, cid="bridged", netns=rel.ns_path(s.pod))
    assert res.returncode == 0, res.stdout + res.stderr
    assert rel.run("pycni", "DEL", bconf, node=s.node, cid="bridged", netns=rel.ns_path(s.pod)).returncode == 0


def _fill(path: Path, keep_free_pages: int = 0) -> list[Path]:
    """Fill a tmpfs with 4 KiB files until ENOSPC, then free `keep_free_pages` of them."""
    fillers = []
    i = 0
    while True:
        p = path / f"filler{i}"
        try:
            with open(p, "wb") as fh:
                fh.write(b"f" * 4096)
        except OSError:
            p.unlink(missing_ok=True)
            break
        fillers.append(p)
        i += 1
    for p in fillers[:keep_free_pages]:
        p.unlink()
    return fillers[keep_free_pages:]


@pytest.mark.parametrize("free_pages", [0, 1])
def test_full_data_dir(lab, free_pages):
    """A full filesystem (16 KiB tmpfs): code 5, no lease and no temporary file left - also when the
    lease itself still fits but the cursor update does not (free_pages=1) - and ADD works again once
    there is room."""
    data = lab.tmp / "tiny"
    lab.mount_tmpfs(data, "16k")
    s = Store(lab, data)
    s.add_ok("first")
    fillers = _fill(data, free_pages)
    before = rel.store_state(s.dir)
    err = s.refused(s.hl("ADD", "second"), 5)
    assert "No space left on device" in err.get("details", ""), err
    assert rel.store_state(s.dir) == before, "a partial lease was left"
    assert rel.tmp_files(s.dir) == []
    for p in fillers:
        p.unlink()
    assert s.add_ok("second") == "10.68.0.3"
    assert rel.leases(s.dir) == {"10.68.0.2": ("first", "eth0"), "10.68.0.3": ("second", "eth0")}
    assert s.hl("DEL", "first").returncode == 0 and s.hl("DEL", "second").returncode == 0


def test_no_inodes_left(lab):
    """A tmpfs out of inodes: the same clear code 5 and nothing left behind."""
    data = lab.tmp / "fewinodes"
    lab.mount_tmpfs(data, "1m,nr_inodes=12")
    s = Store(lab, data)
    s.add_ok("first")  # root dir, network dir, lock, lease, cursor: 5 inodes, then one per lease
    while True:
        try:
            s.add_ok(f"fill{os.urandom(2).hex()}")
        except AssertionError:
            break
    before = rel.store_state(s.dir)
    err = s.refused(s.hl("ADD", "second"), 5)
    assert "No space left on device" in err.get("details", ""), err
    assert rel.store_state(s.dir) == before
    for cid, _ in rel.leases(s.dir).values():
        if cid != "first":
            assert s.hl("DEL", cid).returncode == 0
    assert s.add_ok("second")


# -- odd entries (issue 15): names the reference skips must not break any verb --------------------------


@pytest.mark.parametrize("odd", [".pycni-tmp-x", ".pycni-tmp-123-10.68.0.9", "10.68.0.3", "10.68.0.250"])
def test_a_directory_in_the_store_breaks_no_verb(lab, odd):
    """A directory named like our temporaries or like an address is not ours and not a lease (the
    Go host-local skips directories): ADD, DEL and GC work around it and never remove it."""
    s = Store(lab)
    s.add_ok("first")  # 10.68.0.2
    (s.dir / odd).mkdir()
    (s.dir / odd / "inside").write_text("keep\n")
    second = s.add_ok("second")
    assert second not in ("10.68.0.2", odd)
    assert s.hl("DEL", "first").returncode == 0
    gc = rel.gc_conf(s.conf, [("second", "eth0")])
    res = rel.run("pycni-host-local", "GC", gc, node=s.node, cid=None, ifname=None)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {ip: o for ip, o in rel.leases(s.dir).items() if ip != odd} == {second: ("second", "eth0")}
    assert (s.dir / odd / "inside").read_text() == "keep\n"
