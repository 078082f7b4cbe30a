"""The GC request's list of valid attachments (SPEC.md "GC: Clean up any stale resources"): the one
place that reads it. The bridge and host-local (in-process or exec'd) both call `valid_attachments`,
so they can never disagree on which attachments a GC keeps. docs/gc.md explains every case.

Meaning, following libcni's GCNetworkList (the client every runtime uses):

* libcni first DELs every cached attachment of the network that the caller did not name valid; then
  it sends GC with `cni.dev/valid-attachments` and the same list under `cni.dev/attachments` (the key
  SPEC.md first printed, containernetworking/cni#1101) - or, when the caller gave no list at all
  (`cnitool gc`), with neither key. So:
* neither key, `null` (libcni's rendering of an empty Go slice) and `[]` all mean *no attachment of
  this network is valid*: everything of it goes (as the reference host-local v1.10 does);
* a list keeps exactly its (containerID, ifname) pairs;
* only `cni.dev/attachments`: a runtime written against the first text of SPEC.md 1.1.0; its list
  is the valid list (the reference host-local ignores that key and releases everything: wrong);
* both keys: they must name the same set (libcni always sends the same list twice); if they
  disagree the request is ambiguous and is refused with code 7, before anything is removed;
* a value that is neither a list nor null, an entry that is not an object, or an entry without a
  non-empty string `containerID` and `ifname`: code 7, before anything is removed.
"""

from __future__ import annotations

from .errors import INVALID_CONFIG, CNIError

VALID_KEY = "cni.dev/valid-attachments"  # SPEC.md "GC" since containernetworking/cni#1103
LEGACY_KEY = "cni.dev/attachments"  # SPEC.md 1.1.0 as first published; libcni sends both

Attachment = tuple[str, str]  # (containerID, ifname)


def valid_attachments(raw: dict) -> frozenset[Attachment]:
    """The attachments a GC must keep (empty: keep nothing of this network). Raises code 7 for a
    malformed or ambiguous request; callers run this before they remove anything."""
    lists = {key: attachment_list(raw[key], key) for key in (VALID_KEY, LEGACY_KEY) if key in raw}
    if len(lists) == 2 and lists[VALID_KEY] != lists[LEGACY_KEY]:
        raise CNIError(INVALID_CONFIG, f"{VALID_KEY} and {LEGACY_KEY} disagree",
                       "libcni sends the same list under both keys; refusing to guess which one is meant")
    return next(iter(lists.values()), frozenset())


def attachment_list(value: object, key: str = VALID_KEY) -> frozenset[Attachment]:
    """One list of attachments (the value of `key`); null is the empty list; code 7 when malformed."""
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise CNIError(INVALID_CONFIG, f"{key} must be a list of attachments", type(value).__name__)
    out = set()
    for item in value:
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname") if isinstance(item, dict) else None
        if not (isinstance(cid, str) and cid and isinstance(ifname, str) and ifname):
            raise CNIError(INVALID_CONFIG, f"invalid entry in {key}: want containerID and ifname strings",
                           repr(item)[:200])
        out.add((cid, ifname))
    return frozenset(out)
