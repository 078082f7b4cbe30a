"""Which executables the daemon may run: the CNI_PATH allowlist.

A CNI plugin execs its IPAM delegate from CNI_PATH (SPEC.md "Section 4: Plugin Delegation"). Standalone
that is the caller's own business: the delegate runs with the caller's privileges. In the daemon it
would run with the daemon's, so the daemon is configured with the directories it will exec from
(`pycni daemon --cni-path DIR[:DIR...]`, default the daemon's own $CNI_PATH, else /opt/cni/bin), and a
request whose CNI_PATH names any other directory is refused: its client runs the verb standalone.

The directories must be absolute, and those that exist must be owned by root and writable by nobody
else (otherwise anyone who can write there chooses what the daemon runs); the daemon refuses to start
otherwise. Directories are compared after normalisation, never resolved through symlinks: the
allowlist is a list of names the operator wrote, in the mount namespace the daemon shares with its
callers (peer.py).
"""

from __future__ import annotations

import os
import stat

from .wire import Refused

DEFAULT = "/opt/cni/bin"


def parse(value: str) -> tuple[str, ...]:
    """"DIR[:DIR...]" -> normalised absolute directories; ValueError on a relative one."""
    dirs = []
    for item in value.split(":"):
        if not item:
            continue
        if not os.path.isabs(item):
            raise ValueError(f"CNI_PATH allowlist entry {item!r} is not an absolute path")
        dirs.append(os.path.normpath(item))
    if not dirs:
        raise ValueError("the CNI_PATH allowlist is empty")
    return tuple(dict.fromkeys(dirs))


def unsafe(dirs: tuple[str, ...]) -> list[str]:
    """Why each existing directory may not be trusted (empty: all fine)."""
    problems = []
    for directory in dirs:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue  # created later (the node agent installs the plugins): checked by its owner then
        except OSError as exc:
            problems.append(f"{directory}: {exc.strerror}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            problems.append(f"{directory}: not a directory")
        elif st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"{directory}: must be owned by root and writable by nobody else")
    return problems


def require_allowed(cni_path: str, allowed: tuple[str, ...]) -> None:
    """Refused unless every directory of the request's CNI_PATH is in the allowlist."""
    outside = [d for d in cni_path.split(":") if d and (not os.path.isabs(d) or os.path.normpath(d) not in allowed)]
    if outside:
        raise Refused(f"CNI_PATH directories outside the daemon's allowlist {list(allowed)}: {outside[:5]}")
