"""Install the pycni bundle into the node's CNI bin dir: atomically, and only when it changed.

The bundle (`make bundle`: `pycni`, `pycni-host-local`, `pycni.d/`) sits in the agent's image; the
node's bin dir (/opt/cni/bin, a hostPath) is where the runtime execs plugins from, possibly while we
install. So:

* a content digest of the source bundle (every file's relative path, mode and bytes) is compared with
  the digest stamped inside the installed `pycni.d/` (`.bundle-digest`): equal -> nothing to do;
* otherwise the new `pycni.d` is copied beside the old one under a temporary name, stamped, fsynced,
  and swapped in with renames (old -> `.pycni.d.old.<pid>`, new -> `pycni.d`), then each launcher is
  replaced by its own rename. A plugin starting meanwhile runs either the old or the new bundle's
  interpreter: launchers find `pycni.d` by path at exec time, and both trees are complete.

Nothing else in the bin dir (loopback, portmap, other CNIs) is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import uuid

SUPPORT_DIR = "pycni.d"
LAUNCHERS = ("pycni", "pycni-host-local")
STAMP = ".bundle-digest"


class InstallError(Exception):
    pass


def digest(bundle_dir: str) -> str:
    """A digest of a bundle's content (launchers + pycni.d, excluding our stamp and Python caches)."""
    h = hashlib.sha256()
    entries: list[str] = list(LAUNCHERS)
    base = os.path.join(bundle_dir, SUPPORT_DIR)
    for root, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), bundle_dir)
            if rel == os.path.join(SUPPORT_DIR, STAMP):
                continue
            entries.append(rel)
    for rel in entries:
        path = os.path.join(bundle_dir, rel)
        st = os.lstat(path)
        h.update(rel.encode() + b"\0" + oct(stat.S_IMODE(st.st_mode)).encode() + b"\0")
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L" + os.readlink(path).encode())
        else:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def installed_digest(dest_dir: str) -> str | None:
    try:
        with open(os.path.join(dest_dir, SUPPORT_DIR, STAMP)) as f:
            value = f.read().strip()
    except OSError:
        return None
    if not all(os.path.exists(os.path.join(dest_dir, exe)) for exe in LAUNCHERS):
        return None
    return value or None


def _fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_bundle(src_dir: str) -> None:
    missing = [n for n in (*LAUNCHERS, SUPPORT_DIR) if not os.path.exists(os.path.join(src_dir, n))]
    if missing:
        raise InstallError(f"{src_dir} is not a pycni bundle (missing {', '.join(missing)})")


def install(src_dir: str, dest_dir: str, src_digest: str | None = None) -> bool:
    """Install the bundle at `src_dir` into `dest_dir` unless the same one is there. True when it copied."""
    check_bundle(src_dir)
    src_dir, dest_dir = os.path.realpath(src_dir), os.path.realpath(dest_dir) if os.path.exists(
        dest_dir) else os.path.abspath(dest_dir)
    if src_dir == dest_dir:
        return False
    want = src_digest or digest(src_dir)
    if installed_digest(dest_dir) == want:
        return False
    os.makedirs(dest_dir, exist_ok=True)
    with _locked(dest_dir):
        if installed_digest(dest_dir) == want:  # another agent (a rolling update's twin) just did it
            return False
        _swap_in(src_dir, dest_dir, want)
    return True


@contextlib.contextmanager
def _locked(dest_dir: str):
    """Two agents on one node (old and new pod of a rolling update, each PID 1 of its own container)
    serialise on a lock file in the bin dir itself."""
    fd = os.open(os.path.join(dest_dir, ".pycni-install.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _swap_in(src_dir: str, dest_dir: str, want: str) -> None:
    tag = uuid.uuid4().hex[:8]  # not the PID: agents in different containers may share it
    new, old = os.path.join(dest_dir, f".{SUPPORT_DIR}.new.{tag}"), os.path.join(dest_dir, f".{SUPPORT_DIR}.old.{tag}")
    try:
        shutil.copytree(os.path.join(src_dir, SUPPORT_DIR), new, symlinks=True,
                        ignore=shutil.ignore_patterns(STAMP))
        with open(os.path.join(new, STAMP), "w") as f:
            f.write(want + "\n")
        _fsync_tree(new)
        current = os.path.join(dest_dir, SUPPORT_DIR)
        if os.path.lexists(current):
            os.rename(current, old)
        os.rename(new, current)
        for exe in LAUNCHERS:
            tmp = os.path.join(dest_dir, f".{exe}.new.{tag}")
            shutil.copyfile(os.path.join(src_dir, exe), tmp)
            os.chmod(tmp, 0o755)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(dest_dir, exe))
        _fsync_dir(dest_dir)
    except OSError as exc:
        shutil.rmtree(new, ignore_errors=True)
        raise InstallError(f"installing {src_dir} into {dest_dir}: {exc}") from None
    finally:
        shutil.rmtree(old, ignore_errors=True)
