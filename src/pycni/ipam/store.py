"""The on-disk lease store, byte-compatible with the reference host-local's `disk` backend.

Layout under `<dataDir>/<network name>/`:
  <ip>                  one file per lease, content "containerID\\r\\nifname" (old plugins wrote the ID only)
  last_reserved_ip.<n>  the last address handed out from range set n (round-robin cursor)
  lock                  flock(LOCK_EX) held for the whole operation, by us and by the reference alike

So a lease written by either plugin is seen and released by the other, and the two can run side
by side on one node. Where pycni does better:
  * a lease appears atomically with its content: it is written to a temporary file and hard-linked
    to its address name (link() fails if the name exists, which is the reservation), so a crash
    can never leave an empty lease file behind;
  * an empty lease file found while holding the lock can only be a write the reference plugin did
    not finish (every writer holds the lock), so it is reclaimed - see docs/ipam-store.md;
  * every file is opened relative to the network directory with O_NOFOLLOW, and neither dataDir
    nor the network directory may be a symlink, so a request can never touch files elsewhere.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import stat
import threading
from typing import Any

from .. import faults
from ..spec.errors import IO_FAILURE, CNIError
from .lease import Lease
from .ranges import IPAddress

LINE_BREAK = "\r\n"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
TMP_PREFIX = ".pycni-tmp-"
FILE_MODE = 0o600  # what the current reference writes (v1.10; 1.1.1 wrote 0644): leases are private
MAX_LEASE_BYTES = 4096  # a lease is "id\r\nifname": anything bigger is not one of ours


def _io_error(action: str, path: str, exc: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"failed to {action} {path}", f"{exc.strerror or exc}")


def _parse_ip(name: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    return ip if str(ip) == name else None  # only canonical names are leases


# -- a long-lived process's view of network directories (the daemon; see docs/performance.md) -----------
#
# An exec'd plugin reads every lease file on each ADD, as the reference does (GetByID). A daemon keeps
# what it has read in a LeaseCache, which it passes to every DiskStore it opens: an inotify watch on the
# directory reports every name created, written, renamed or removed - by this process, by a standalone
# pycni, by the reference host-local - and only those are read again, so an ADD costs the same with
# 1,000 leases held as with none. The events of everything done before we took the lock are queued when
# we read them: every writer holds the lock, and inotify queues an event during the system call that
# causes it. A full rescan happens when the queue overflowed, the watch went away or the directory was
# replaced. Without inotify (watch limits), a cache keyed by each file's (inode, size, mtime, ctime) is
# used: one fstatat per lease.
#
# Kernel resources are bounded: ONE inotify instance per cache (the daemon has one cache per worker
# process; root's limit of 128 instances is shared with containerd, the kubelet and systemd), at most
# max_watches directories watched (the least recently used one gives its watch back), and a watch
# whose directory is removed is released by the kernel (IN_IGNORED) and forgotten here at the next
# event read.
MAX_WATCHES = 64
_MASK = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # IN_MODIFY..IN_MOVE_SELF
_GONE = 0x400 | 0x800 | 0x2000 | 0x8000  # delete/move self, unmount, ignored (the watch is removed)
_IGNORED = 0x8000
_OVERFLOW = 0x4000
_ONLYDIR = 0x01000000


class LeaseCache:
    """What a long-lived process knows of the lease directories it has opened (thread-safe: the
    daemon's request threads share it). `inotify=False` keeps only the stat cache."""

    def __init__(self, inotify: bool = True, max_watches: int = MAX_WATCHES) -> None:
        self.inotify = inotify
        self.max_watches = max_watches
        self.lock = threading.Lock()
        self.fd: int | None = None  # the inotify instance, opened with the first watch
        self.watches: dict[str, _Watch] = {}  # network directory -> its watch, least recent first
        self.by_wd: dict[int, _Watch] = {}
        # network directory -> lease file name -> ((inode, size, mtime_ns, ctime_ns), Lease): the fallback.
        self.seen: dict[str, dict[str, tuple[tuple[int, int, int, int], Lease]]] = {}
        self._libc: Any = None

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
            self.watches.clear()
            self.by_wd.clear()
            self.seen.clear()

    def _instance(self) -> int:
        if self.fd is None:
            fd = self._call("inotify_init1", os.O_NONBLOCK | os.O_CLOEXEC)
            self.fd = fd
        return self.fd

    def _call(self, name: str, *args) -> int:
        import ctypes

        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
        value = getattr(self._libc, name)(*args)
        if value < 0:
            raise OSError(ctypes.get_errno(), name)
        return value

    def watch(self, path: str, dir_fd: int) -> _Watch | None:
        """The directory's watch, up to date (a new one if it died or the directory was replaced);
        None without inotify (the caller falls back to the stat cache)."""
        if not self.inotify:
            return None
        ino = os.fstat(dir_fd).st_ino
        with self.lock:
            self._pump()
            watch = self.watches.get(path)
            if watch is not None and (watch.dead or watch.ino != ino):
                self._release(watch)
                watch = None
            if watch is None:
                while len(self.watches) >= self.max_watches:
                    self._release(next(iter(self.watches.values())))  # the least recently used directory
                try:
                    wd = self._call("inotify_add_watch", self._instance(), f"/proc/self/fd/{dir_fd}".encode(),
                                    _MASK | _ONLYDIR)
                except OSError:
                    return None  # no inotify here: the stat cache of leases() does the job
                watch = _Watch(path, ino, wd)
                stale = self.by_wd.get(wd)  # the same directory under another path: one view only
                if stale is not None:
                    self._forget(stale)
                    stale.dead = True
                self.watches[path] = self.by_wd[wd] = watch
            self.watches[path] = self.watches.pop(path)  # most recently used last
            return watch

    def _forget(self, watch: _Watch) -> None:
        if self.watches.get(watch.path) is watch:
            del self.watches[watch.path]
        if self.by_wd.get(watch.wd) is watch:
            del self.by_wd[watch.wd]

    def _release(self, watch: _Watch) -> None:
        """Give the watch back (the kernel then queues IN_IGNORED for a wd nobody maps any more)."""
        self._forget(watch)
        if not watch.dead and self.fd is not None:
            self._libc.inotify_rm_watch(self.fd, watch.wd)
        watch.dead = True

    def _pump(self) -> None:
        """Take in every queued event of every watched directory (with the lock held)."""
        import struct

        if self.fd is None:
            return
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            pos = 0
            while pos + 16 <= len(data):
                wd, mask, _cookie, size = struct.unpack_from("iIII", data, pos)
                name = data[pos + 16 : pos + 16 + size].rstrip(b"\0").decode(errors="surrogateescape")
                pos += 16 + size
                if mask & _OVERFLOW:  # events were lost, for any directory: rescan them all
                    for each in self.watches.values():
                        each.names = None
                    continue
                watch = self.by_wd.get(wd)
                if watch is None:
                    continue  # a watch we gave back
                if mask & _GONE:
                    watch.names = None
                    watch.dead = True
                    if mask & _IGNORED:  # the kernel removed the watch (directory deleted...)
                        self._forget(watch)
                elif name:
                    watch.dirty.add(name)

    def names(self, watch: _Watch, scan, read) -> dict[str, Lease | None]:
        """The watched directory's names and their leases, read again (`read(name)`) only where
        events said so; `scan()` lists the directory when the view is gone. The caller holds the flock."""
        with self.lock:
            self._pump()
            if watch.names is None:
                watch.dirty.clear()
                watch.names, watch.temporaries, watch.held = {}, set(), {4: set(), 6: set()}
                for name in scan():
                    watch.put(name, read(name))
                return watch.names
            for name in watch.dirty:
                watch.put(name, read(name))
            watch.dirty.clear()
            return watch.names

    def remember(self, path: str, fresh: dict[str, tuple[tuple[int, int, int, int], Lease]]) -> None:
        with self.lock:
            self.seen.pop(path, None)
            self.seen[path] = fresh  # what was released is forgotten; most recent last
            while len(self.seen) > self.max_watches:
                del self.seen[next(iter(self.seen))]


class _Watch:
    """The inotify watch on one network directory, and the names it holds (None for non-lease names).
    Only touched with its cache's lock held."""

    def __init__(self, path: str, ino: int, wd: int) -> None:
        self.path = path
        self.ino = ino
        self.wd = wd
        self.names: dict[str, Lease | None] | None = None  # None: scan the directory
        self.dirty: set[str] = set()
        self.dead = False
        # kept with `names`, so that no request walks 1,000 names to find them:
        self.temporaries: set[str] = set()  # names of writers' temporary files
        self.held: dict[int, set[int]] = {4: set(), 6: set()}  # family -> addresses of non-empty leases

    def put(self, name: str, lease: Lease | None) -> None:
        """Record what `name` is now (_MISSING: gone)."""
        assert self.names is not None
        old = self.names.pop(name, None)
        if old is not None and not old.empty:
            self.held[old.ip.version].discard(int(old.ip))
        if lease is _MISSING:
            self.temporaries.discard(name)
            return
        self.names[name] = lease
        if name.startswith(TMP_PREFIX):
            self.temporaries.add(name)
        if lease is not None and not lease.empty:
            self.held[lease.ip.version].add(int(lease.ip))


_MISSING: Lease = Lease(ipaddress.ip_address("0.0.0.0"), None, None)  # a name that no longer exists


class DiskStore:
    """A locked view of one network's lease directory. Use as a context manager."""

    def __init__(self, data_dir: str, network: str, create: bool = True, cache: LeaseCache | None = None) -> None:
        self.data_dir = data_dir
        self.network = network
        self.path = os.path.join(data_dir, network)
        self._create = create
        self._cache = cache  # a long-lived process's view of the directory (None: read it every time)
        self._dir_fd: int | None = None
        self._lock_fd: int | None = None
        self._watch: _Watch | None = None

    # -- opening and locking ------------------------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def __enter__(self) -> DiskStore:  # noqa: PYI034 - never subclassed
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self._watch = None
        try:
            if self._create:
                os.makedirs(self.data_dir, mode=0o755, exist_ok=True)
            self._refuse_symlink(self.data_dir, "dataDir")
            if self._create:
                try:
                    os.mkdir(self.path, 0o755)
                except FileExistsError:
                    pass
            self._refuse_symlink(self.path, "network directory")
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                                    dir_fd=self._dir_fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except CNIError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise _io_error("open the IPAM store", self.path, exc) from None
        if self._cache is not None:
            self._watch = self._cache.watch(self.path, self._dir_fd)
        self._sweep_temporaries()

    @staticmethod
    def _refuse_symlink(path: str, what: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise CNIError(IO_FAILURE, f"IPAM {what} {path} is not a directory (symlinks are refused)")

    def close(self) -> None:
        for attr in ("_lock_fd", "_dir_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)  # closing the lock fd releases the flock
                setattr(self, attr, None)

    @property
    def dir_fd(self) -> int:
        if self._dir_fd is None:
            raise RuntimeError("store is not open")
        return self._dir_fd

    def _names(self) -> dict[str, Lease | None]:
        """The directory's names, from the cache's view (the caller holds the flock)."""
        assert self._watch is not None and self._cache is not None
        return self._cache.names(self._watch, self._scan, self._named)

    def _scan(self) -> list[str]:
        return [entry.name for entry in os.scandir(self.dir_fd)]

    def _named(self, name: str) -> Lease | None:
        """What the name `name` is now: a lease, None (not a lease name), _MISSING (gone)."""
        try:
            os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return _MISSING
        except OSError:
            pass  # exists but cannot be looked at: _lease records it as unreadable
        ip = _parse_ip(name)
        return self._lease(ip, name) if ip is not None else None

    def temporaries(self) -> list[str]:
        """Names of temporary files (TMP_PREFIX) in the directory."""
        if self._watch is not None:
            self._names()
            return sorted(self._watch.temporaries)
        return [e.name for e in os.scandir(self.dir_fd) if e.name.startswith(TMP_PREFIX)]

    def held(self, family: int) -> set[int]:
        """The addresses (as integers) of the non-empty leases of one family: what an ADD must skip."""
        if self._watch is not None:
            self._names()
            return set(self._watch.held[family])
        return {int(lease.ip) for lease in self.leases() if not lease.empty and lease.ip.version == family}

    def _sweep_temporaries(self) -> None:
        """Temporary files seen while we hold the lock belong to writers that died: remove them.

        Only regular files are ours (every writer creates its temporary with O_CREAT|O_EXCL): a symlink,
        a FIFO or a directory someone made with our prefix is left alone, and a name we cannot remove (an
        immutable file) must not stop the verb - every writer uses a fresh temporary name."""
        for name in self.temporaries():
            try:
                if stat.S_ISREG(os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=self.dir_fd)
            except OSError:
                pass  # FileNotFoundError: gone already; EPERM...: not one we may remove

    # -- reading ------------------------------------------------------------------------------------------

    def _read(self, name: str, limit: int = MAX_LEASE_BYTES) -> bytes | None:
        """The file's bytes, or None when it cannot be read (gone, a symlink, not a regular file...)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.dir_fd)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, limit + 1)
        except OSError:
            return None
        finally:
            os.close(fd)

    def leases(self) -> list[Lease]:
        """Every lease file, parsed (in the daemon: from its in-memory view, see _Watch)."""
        if self._watch is not None:
            return [lease for lease in self._names().values() if lease is not None]
        if self._cache is None:
            out = []
            for entry in os.scandir(self.dir_fd):
                ip = _parse_ip(entry.name)
                if ip is None:
                    continue  # lock, last_reserved_ip.N, temporaries
                lease = self._lease(ip, entry.name)
                if lease is not None:
                    out.append(lease)
            return out
        # Fallback cache: a lease file is written once and then only removed, so what was read is
        # reused while the file's inode, size, mtime and ctime are unchanged (one fstatat per lease).
        seen = self._cache.seen.get(self.path, {})
        fresh: dict[str, tuple[tuple[int, int, int, int], Lease]] = {}
        out = []
        for entry in os.scandir(self.dir_fd):
            name = entry.name
            hit = seen.get(name)
            if hit is None:
                ip = _parse_ip(name)
                if ip is None:
                    continue  # lock, last_reserved_ip.N, temporaries
            else:
                ip = hit[1].ip
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                lease = self._lease(ip, name)
                if lease is not None:
                    out.append(lease)
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            lease = hit[1] if hit is not None and hit[0] == key else self._lease(ip, name)
            if lease is None:
                continue
            fresh[name] = (key, lease)
            out.append(lease)
        self._cache.remember(self.path, fresh)
        return out

    def _lease(self, ip: IPAddress, name: str) -> Lease | None:
        """The lease file `name`, parsed; None when the name is a directory: not a lease at all (the
        reference's disk store skips directories too), and nothing a verb may remove."""
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_mode):
                return None
        except OSError:
            pass  # gone or unreadable: _read decides
        data = self._read(name)
        if data is None or len(data) > MAX_LEASE_BYTES:
            return Lease(ip, None, None)
        if not data.strip():
            return Lease(ip, None, None, empty=True)
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            return Lease(ip, None, None)
        lines = text.split(LINE_BREAK)
        if len(lines) == 1:
            return Lease(ip, lines[0].strip(), None)
        if len(lines) == 2:
            return Lease(ip, lines[0].strip(), lines[1].strip())
        return Lease(ip, None, None)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        data = self._read(f"{LAST_RESERVED_PREFIX}{range_id}", 128)
        if not data:
            return None
        try:
            return ipaddress.ip_address(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return None  # garbage cursor: start from the beginning, it is rewritten on the next lease

    # -- writing ------------------------------------------------------------------------------------------

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_id: int) -> bool:
        """Create the lease for `ip`; False if the address is already taken."""
        content = (container_id.strip() + LINE_BREAK + ifname).encode()
        tmp = f"{TMP_PREFIX}{os.getpid()}-{ip}"
        try:
            self._write_new(tmp, content)
            faults.point("store.reserve.tmp")
            try:
                os.link(tmp, str(ip), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False)
                faults.point("store.reserve.link")
            except FileExistsError:
                return False
            finally:
                self._unlink(tmp)
            try:
                self._replace(f"{LAST_RESERVED_PREFIX}{range_id}", str(ip).encode())
            except OSError:
                # the disk is full (or went read-only) after the lease was linked: take the lease
                # back, so the failed ADD leaves nothing behind (the reference would keep it)
                self.release(ip)
                raise
            faults.point("store.reserve.cursor")
        except OSError as exc:
            raise _io_error("write a lease in", self.path, exc) from None
        return True

    def release(self, ip: IPAddress) -> None:
        self._unlink(str(ip))
        faults.point("store.release")

    def _write_new(self, name: str, content: bytes) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=self.dir_fd)
        try:
            os.fchmod(fd, FILE_MODE)  # independent of the caller's umask
            if os.write(fd, content) != len(content):
                raise OSError(errno.EIO, "short write")
        except OSError:
            os.close(fd)
            self._unlink(name)
            raise
        os.close(fd)

    def _replace(self, name: str, content: bytes) -> None:
        tmp = f"{TMP_PREFIX}{os.getpid()}-{name}"
        self._write_new(tmp, content)
        try:
            os.rename(tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError:
            self._unlink(tmp)
            raise

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error("remove", os.path.join(self.path, name), exc) from None
