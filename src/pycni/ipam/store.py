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
from dataclasses import dataclass

from .. import faults
from ..spec.errors import IO_FAILURE, CNIError
from .ranges import IPAddress

LINE_BREAK = "\r\n"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
TMP_PREFIX = ".pycni-tmp-"
FILE_MODE = 0o644  # what the reference writes
MAX_LEASE_BYTES = 4096  # a lease is "id\r\nifname": anything bigger is not one of ours


@dataclass(frozen=True)
class Lease:
    ip: IPAddress
    container_id: str | None  # None: the file is empty or unreadable
    ifname: str | None  # None for the ID-only format of old plugins
    empty: bool = False

    @property
    def legacy(self) -> bool:
        return self.container_id is not None and self.ifname is None


def _io_error(action: str, path: str, exc: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"failed to {action} {path}", f"{exc.strerror or exc}")


def _parse_ip(name: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    return ip if str(ip) == name else None  # only canonical names are leases


# network directory -> lease file name -> ((inode, size, mtime_ns, ctime_ns), Lease), see leases().
# Only read and written under that directory's lock.
_seen: dict[str, dict[str, tuple[tuple[int, int, int, int], Lease]]] = {}


class DiskStore:
    """A locked view of one network's lease directory. Use as a context manager."""

    def __init__(self, data_dir: str, network: str, create: bool = True) -> None:
        self.data_dir = data_dir
        self.network = network
        self.path = os.path.join(data_dir, network)
        self._create = create
        self._dir_fd: int | None = None
        self._lock_fd: int | None = None

    # -- opening and locking ------------------------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def __enter__(self) -> "DiskStore":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
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

    def _sweep_temporaries(self) -> None:
        """Temporary files seen while we hold the lock belong to writers that died: remove them."""
        for entry in os.scandir(self.dir_fd):
            if entry.name.startswith(TMP_PREFIX):
                self._unlink(entry.name)

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
        """Every lease file, parsed. A lease file is written once and then only removed, so what this
        process has read is kept (`_seen`) and reused while the file's inode, size, mtime and ctime
        are unchanged: one fstatat per lease instead of open/fstat/read/close and parsing, which
        keeps an ADD in the daemon flat however many leases the network holds."""
        seen = _seen.get(self.path, {})
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
                out.append(self._lease(ip, name))
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            lease = hit[1] if hit is not None and hit[0] == key else self._lease(ip, name)
            fresh[name] = (key, lease)
            out.append(lease)
        _seen[self.path] = fresh  # what was released is forgotten
        return out

    def _lease(self, ip: IPAddress, name: str) -> Lease:
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
            self._replace(f"{LAST_RESERVED_PREFIX}{range_id}", str(ip).encode())
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
