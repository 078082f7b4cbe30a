"""The forms of a GC request's valid-attachments list (pycni.spec.gc, docs/gc.md) that the GC tests walk:
tests/unit/test_spec_gc.py (the parser, host-local next to the reference) and tests/netns/test_bridge_gc.py
(the bridge, its IPAM and libcni on a node)."""

from __future__ import annotations

from pycni.spec.gc import LEGACY_KEY, VALID_KEY

A = {"containerID": "ctrA", "ifname": "eth0"}
B = {"containerID": "ctrB", "ifname": "eth0"}
C = {"containerID": "ctrC", "ifname": "eth0"}  # valid, but holds nothing: keeps nothing by itself

# case -> (extra top-level keys, the attachments (of A, B) that stay) - accepted requests
ACCEPTED: dict[str, tuple[dict, set[str]]] = {
    "key-missing": ({}, set()),
    "null": ({VALID_KEY: None}, set()),
    "empty": ({VALID_KEY: []}, set()),
    "list": ({VALID_KEY: [A, C]}, {"ctrA"}),
    "legacy-only": ({LEGACY_KEY: [B]}, {"ctrB"}),
    "legacy-only-null": ({LEGACY_KEY: None}, set()),
    "both-agree": ({VALID_KEY: [A, B], LEGACY_KEY: [B, A, B]}, {"ctrA", "ctrB"}),
    "both-null-and-empty": ({VALID_KEY: None, LEGACY_KEY: []}, set()),
    "entry-extra-keys": ({VALID_KEY: [dict(B, note="x")]}, {"ctrB"}),
}
# case -> extra top-level keys: refused with code 7, nothing removed
REFUSED: dict[str, dict] = {
    "both-disagree": {VALID_KEY: [A], LEGACY_KEY: [B]},
    "null-with-legacy-list": {VALID_KEY: None, LEGACY_KEY: [A]},  # issue 15 item 1
    "not-a-list": {VALID_KEY: A},
    "entry-not-an-object": {VALID_KEY: [A, "ctrB"]},
    "entry-without-ifname": {VALID_KEY: [A, {"containerID": "ctrB"}]},
    "entry-int-containerID": {VALID_KEY: [{"containerID": 5, "ifname": "eth0"}]},
    "entry-empty-ifname": {VALID_KEY: [A, {"containerID": "ctrB", "ifname": ""}]},
    "legacy-malformed": {VALID_KEY: [A], LEGACY_KEY: [A, 5]},
}
