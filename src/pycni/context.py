"""What a long-lived process keeps between requests, handed to the verbs with each Request.

An exec'd plugin keeps nothing (Request.context is None): it reads the lease store and opens its netlink
sockets afresh, and exits. The daemon's workers (pycni.daemon.workers) give every request a Context:

  leases   the lease cache of the worker process (pycni.ipam.store.LeaseCache: inotify-backed, shared by
           the process's request threads), so an ADD does not re-read 1,000 lease files;
  netlink  the calling thread's netlink handles (pycni.bridge.netlink.Handles), opened once and reused by
           every request that thread runs (setns(2) is per thread, so handles are too).

Nothing here is a module global: whoever creates a Context owns it and closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Context:
    leases: Any = None  # pycni.ipam.store.LeaseCache
    netlink: Any = None  # pycni.bridge.netlink.Handles

    def close(self) -> None:
        if self.netlink is not None:
            self.netlink.close()
