"""A lease as the host-local store holds it: one file per address, named after it, whose content is
"<container ID>\r\n<ifname>" (docs/ipam-store.md). What the store reads and the allocator reasons on."""

from __future__ import annotations

from dataclasses import dataclass

from .ranges import IPAddress


@dataclass(frozen=True)
class Lease:
    ip: IPAddress
    container_id: str | None  # None: the file is empty or unreadable
    ifname: str | None  # None for the ID-only format of old plugins
    empty: bool = False

    @property
    def legacy(self) -> bool:
        return self.container_id is not None and self.ifname is None
