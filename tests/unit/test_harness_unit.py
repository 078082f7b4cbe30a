"""The root-free parts of integration/harness, the one harness of the runtime, docker-node and kind suites:
polling, commands, the busybox images, the scratch ledger and the reaping of a killed run. (Namespaces, daemons
and dockerd run in the suites themselves: integration/runtimes, integration/kindlab.)"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration"))

from harness import images, processes, scratch, wait


def test_retry_returns_the_first_result_that_does_not_raise():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise wait.NotYet(f"try {len(calls)}")
        return "done"
    assert wait.retry(fn, "thing", timeout=10, interval=0) == "done"
    assert len(calls) == 3


def test_retry_fails_with_the_given_exception_and_the_last_error():
    class Failed(AssertionError):
        pass

    def fn():
        raise wait.NotYet("still red")
    with pytest.raises(Failed, match=r"^the light: not within 0s: still red$"):
        wait.retry(fn, "the light", timeout=0, interval=0, fail=Failed)


def test_retry_lets_other_errors_through():
    def fn():
        raise KeyError("bug")
    with pytest.raises(KeyError):
        wait.retry(fn, "x", timeout=10, interval=0)


def test_wait_for_returns_the_true_value_and_retries_listed_errors():
    seq = iter([None, ValueError("half written"), 0, ["a"]])

    def pred():
        item = next(seq)
        if isinstance(item, Exception):
            raise item
        return item
    assert wait.wait_for(pred, "list", timeout=10, interval=0, retry_on=(ValueError,)) == ["a"]
    with pytest.raises(TimeoutError, match="never: not within 0s: still False"):
        wait.wait_for(lambda: False, "never", timeout=0, interval=0)


def test_run_raises_with_both_outputs_and_missing_names_what_lacks():
    assert processes.run(["sh", "-c", "echo out"]).stdout == "out\n"
    with pytest.raises(processes.CommandFailed) as exc:
        processes.run(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"])
    assert exc.value.returncode == 3 and "to-stdout" in str(exc.value) and "to-stderr" in str(exc.value)
    assert processes.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    assert processes.missing(["sh", "no-such-program-pycni"], ["/", "/no/such/file"]) == \
        ["no-such-program-pycni", "/no/such/file"]


needs_busybox = pytest.mark.skipif(not images.BUSYBOX.exists(), reason="busybox-static not installed")


@needs_busybox
def test_busybox_rootfs_links_applets_except_where_a_program_exists(tmp_path):
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/ip").write_text("real ip")
    root = images.busybox_rootfs(tmp_path)
    assert os.access(root / "bin/busybox", os.X_OK) and os.access(root / "pause", os.X_OK)
    assert os.readlink(root / "bin/sh") == "busybox" and os.readlink(root / "bin/httpd") == "busybox"
    assert not (root / "bin/ip").is_symlink(), "busybox's ip would shadow the real one"
    assert (root / "www/index.html").read_bytes() == images.INDEX_HTML
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (root / "tmp").stat().st_mode & 0o1777 == 0o1777


@needs_busybox
def test_oci_archive_is_a_consistent_reproducible_image_layout(tmp_path):
    a = images.busybox_oci_archive(tmp_path / "a.tar", "localhost/x/y:1")
    b = images.busybox_oci_archive(tmp_path / "b.tar", "localhost/x/y:1")
    assert a.read_bytes() == b.read_bytes(), "two builds differ"
    with tarfile.open(a) as tf:
        blobs = {m.name.rsplit("/", 1)[1]: tf.extractfile(m).read() for m in tf.getmembers()
                 if m.isfile() and m.name.startswith("blobs/sha256/")}
        index = json.loads(tf.extractfile("index.json").read())
    for digest, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == digest
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x/y:1"
    manifest = json.loads(blobs[entry["digest"].split(":")[1]])
    config = json.loads(blobs[manifest["config"]["digest"].split(":")[1]])
    layer_gz = blobs[manifest["layers"][0]["digest"].split(":")[1]]
    layer = gzip.decompress(layer_gz)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["bin/busybox"].mode & 0o111 and members["pause"].mode & 0o111
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert {m.uid for m in members.values()} == {0} and {m.mtime for m in members.values()} == {0}


def test_images_command_line_usage():
    proc = subprocess.run([sys.executable, str(ROOT / "integration/harness/images.py"), "nonsense"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "images.py oci OUT.tar" in proc.stderr


@pytest.mark.parametrize("script", ["dockerd.sh", "cluster-paths.sh"])
def test_shell_syntax(script):
    proc = subprocess.run(["bash", "-n", str(ROOT / "integration/harness" / script)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("build,name,want_build,want_name", [
    (None, None, "{root}/build", "pycni"),
    ("out/b", "", "{root}/out/b", "pycni"),   # relative: from the checkout, wherever the script runs
    ("/abs/b", "kx", "/abs/b", "kx"),
])
def test_cluster_paths(tmp_path, build, name, want_build, want_name):
    env = {k: v for k, v in os.environ.items() if k not in ("BUILD", "CLUSTER_NAME")}
    env.update({k: v for k, v in (("BUILD", build), ("CLUSTER_NAME", name)) if v is not None})
    script = f'. {ROOT}/integration/harness/cluster-paths.sh; printf "%s|%s|%s" "$ROOT" "$BUILD" "$CLUSTER_NAME"'
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert proc.stdout == f"{ROOT}|{want_build.format(root=ROOT)}|{want_name}"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_reap_stale_removes_only_runs_whose_owner_is_gone(tmp_path):
    dead, alive = tmp_path / "pycnitest-dead", tmp_path / "pycnitest-alive"
    for d, owner in ((dead, _dead_pid()), (alive, os.getpid())):
        d.mkdir()
        (d / scratch.LEDGER).write_text(f"pid {owner}\ncgroup /pycnitest-none\n")
        (d / "state.log").write_text("x")
    (tmp_path / "pycnitest-noledger").mkdir()  # not ours to judge: no ledger
    reaped = scratch.reap_stale("pycnitest", tmp_path)
    assert reaped == [f"{dead}: 0 leftovers"]
    assert not dead.exists() and alive.exists() and (tmp_path / "pycnitest-noledger").exists()
    assert scratch.read_ledger(alive) == [("pid", str(os.getpid())), ("cgroup", "/pycnitest-none")]
