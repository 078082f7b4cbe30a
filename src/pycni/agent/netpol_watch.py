"""Pods, namespaces and NetworkPolicies, kept current from the Kubernetes API (list + watch), or from
a JSON file (tests, clusters without an API server).

One `Reflector` thread per resource does what client-go's reflector does, with the stdlib client of
nodes.py: LIST (cluster-wide), then WATCH from the list's resourceVersion; every event updates the
`Store`; a watch that ends (server timeout, connection lost) resumes from the last resourceVersion
seen (bookmarks keep it fresh); an `ERROR` event (410 Gone: that version is too old) or a failed
request starts over with a LIST after a short backoff. Only the fields the compiler needs are kept
(netpol_model). An object the model cannot read is left out and reported - never silently.

The `Store` counts as synced once every resource has been listed: before that the controller
applies nothing (a ruleset compiled from policies without their pods would cut traffic off).
`changed` is set by every update, and `since` remembers when the oldest unapplied update arrived,
which is where the controller's "change -> enforced" latency starts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

from .netpol_compile import Snapshot
from .netpol_model import ModelError, Namespace, NetworkPolicy, Pod
from .nodes import KubeClient, NodeSourceError

log = logging.getLogger("pycni.netpol")

# resource -> (collection path, parser)
RESOURCES: dict[str, tuple[str, Callable]] = {
    "pods": ("/api/v1/pods", Pod.from_api),
    "namespaces": ("/api/v1/namespaces", Namespace.from_api),
    "networkpolicies": ("/apis/networking.k8s.io/v1/networkpolicies", NetworkPolicy.from_api),
}
WATCH_SECONDS = 300


def object_key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, object]] = {kind: {} for kind in RESOURCES}
        self._synced: set[str] = set()
        self.bad: dict[str, str] = {}   # "kind key" -> why it was left out
        self.changed = threading.Event()
        self.since: float | None = None  # monotonic time of the oldest unapplied change

    def _parse(self, kind: str, obj: dict):
        try:
            parsed = RESOURCES[kind][1](obj)
        except ModelError as exc:
            if self.bad.get(f"{kind} {object_key(obj)}") != str(exc):
                log.error("%s %s left out: %s", kind, object_key(obj), exc)
            self.bad[f"{kind} {object_key(obj)}"] = str(exc)
            return None
        self.bad.pop(f"{kind} {object_key(obj)}", None)
        return parsed

    def _touch(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.changed.set()

    def replace(self, kind: str, items: list[dict]) -> None:
        """The result of a LIST: the whole collection."""
        with self._lock:
            parsed = {}
            for obj in items:
                p = self._parse(kind, obj)
                if p is not None:
                    parsed[object_key(obj)] = p
            if parsed != self._objects[kind] or kind not in self._synced:
                self._objects[kind] = parsed
                self._synced.add(kind)
                self._touch()

    def apply(self, kind: str, event_type: str, obj: dict) -> None:
        """One watch event: ADDED / MODIFIED / DELETED."""
        key = object_key(obj)
        with self._lock:
            old = self._objects[kind].get(key)
            if event_type == "DELETED":
                self._objects[kind].pop(key, None)
                self.bad.pop(f"{kind} {key}", None)
                new = None
            else:
                new = self._parse(kind, obj)
                if new is None:
                    self._objects[kind].pop(key, None)
                else:
                    self._objects[kind][key] = new
            if new != old:  # a status update that changes nothing we use is not a change
                self._touch()

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._synced == set(RESOURCES)

    def snapshot(self) -> tuple[Snapshot, float | None]:
        """The current state, and when its oldest unapplied change arrived (None: nothing new)."""
        with self._lock:
            self.changed.clear()
            since, self.since = self.since, None
            objs = self._objects
            return Snapshot(pods=tuple(objs["pods"].values()), namespaces=tuple(objs["namespaces"].values()),
                            policies=tuple(objs["networkpolicies"].values())), since


class Reflector(threading.Thread):
    """LIST + WATCH of one resource into the store, until `stop` is set."""

    def __init__(self, client: KubeClient, kind: str, store: Store, stop: threading.Event) -> None:
        super().__init__(name=f"netpol-{kind}", daemon=True)
        self.client, self.kind, self.store, self.stop = client, kind, store, stop
        self.path = RESOURCES[kind][0]

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                version = self._list()
                backoff = 0.5
                while not self.stop.is_set():
                    version = self._watch(version)
                    if version is None:  # 410 Gone or an ERROR event: list again
                        break
            except (NodeSourceError, OSError, ValueError, TypeError) as exc:
                log.warning("%s: %s (listing again in %.1fs)", self.kind, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _list(self) -> str:
        doc = self.client.get_json(self.path)
        items = doc.get("items")
        if not isinstance(items, list):
            raise TypeError(f"GET {self.path}: no items")
        self.store.replace(self.kind, items)
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str | None:
        query = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(WATCH_SECONDS)}
        with self.client.open(self.path, query, timeout=WATCH_SECONDS + 30) as resp:
            for line in resp:
                if self.stop.is_set():
                    return version
                if not line.strip():
                    continue
                event = json.loads(line)
                typ, obj = event.get("type"), event.get("object") or {}
                if typ == "ERROR":
                    log.info("%s: watch ended: %s", self.kind, obj.get("message", obj))
                    return None
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if typ in ("ADDED", "MODIFIED", "DELETED"):
                    self.store.apply(self.kind, typ, obj)
        return version


class FileReflector(threading.Thread):
    """The three collections from one JSON file `{"pods": [...], "namespaces": [...],
    "networkpolicies": [...]}` of API objects, re-read whenever its mtime changes (write it by
    renaming a temporary file over it)."""

    def __init__(self, path: str, store: Store, stop: threading.Event, poll: float = 0.05) -> None:
        super().__init__(name="netpol-file", daemon=True)
        self.path, self.store, self.stop, self.poll = path, store, stop, poll

    def load(self) -> bool:
        try:
            with open(self.path) as f:
                doc = json.load(f)
            for kind in RESOURCES:
                items = doc.get(kind, [])
                if not isinstance(items, list):
                    raise TypeError(f"{kind} must be a list")
                self.store.replace(kind, items)
            return True
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("state file %s: %s", self.path, exc)
            return False

    def run(self) -> None:
        seen = None
        while not self.stop.is_set():
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except OSError:
                mtime = None
            if mtime is not None and mtime != seen and self.load():
                seen = mtime
            self.stop.wait(self.poll)
