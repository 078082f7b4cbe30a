"""A tiny fake Kubernetes API server for the agent's and the NetworkPolicy controller's --kube tests
(stdlib only; run it inside a test namespace, it listens on 127.0.0.1 only).

    python agent_fake_api.py PORT STATE_JSON CERT KEY TOKEN_FILE

STATE_JSON is either a list of v1.Node objects, or {"nodes": [...], "pods": [...], "namespaces": [...],
"networkpolicies": [...]}. It is re-read whenever its mtime changes (write it by renaming a temporary file
over it); every change gets a new resourceVersion (a counter) and, per resource, the ADDED / MODIFIED /
DELETED events that turn the previous collection into the new one.

GET <collection>                      -> a List of the objects, metadata.resourceVersion = the current one
GET <collection>?watch=1&resourceVersion=V&timeoutSeconds=T
                                      -> the events after V, then each new one as it happens, one JSON
                                         object per line, until T seconds have passed
Collections: /api/v1/nodes, /api/v1/pods, /api/v1/namespaces, /apis/networking.k8s.io/v1/networkpolicies.
Requests need `Authorization: Bearer <TOKEN_FILE content>`. Prints "ready" when listening.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse

PATHS = {"/api/v1/nodes": ("nodes", "NodeList"), "/api/v1/pods": ("pods", "PodList"),
         "/api/v1/namespaces": ("namespaces", "NamespaceList"),
         "/apis/networking.k8s.io/v1/networkpolicies": ("networkpolicies", "NetworkPolicyList")}


def _key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class State:
    """The collections, their version counter and the event log, followed from the file."""

    def __init__(self, path: str) -> None:
        self.path, self.version, self.mtime = path, 0, None
        self.current: dict[str, dict[str, dict]] = {r: {} for r, _ in PATHS.values()}
        self.events: list[tuple[int, str, dict]] = []  # (version, resource, event)
        self.cond = threading.Condition()
        self.reload()
        threading.Thread(target=self._follow, daemon=True).start()

    def reload(self) -> None:
        mtime = os.stat(self.path).st_mtime_ns
        if mtime == self.mtime:
            return
        with open(self.path) as f:
            doc = json.load(f)
        if isinstance(doc, list):
            doc = {"nodes": doc}
        with self.cond:
            self.mtime = mtime
            self.version += 1
            v = str(self.version)
            for resource in self.current:
                new = {_key(o): copy.deepcopy(o) for o in doc.get(resource, [])}
                for o in new.values():
                    o.setdefault("metadata", {})["resourceVersion"] = v
                old = self.current[resource]
                for k, o in new.items():
                    if k not in old:
                        self.events.append((self.version, resource, {"type": "ADDED", "object": o}))
                    elif {**old[k], "metadata": {**old[k]["metadata"], "resourceVersion": v}} != o:
                        self.events.append((self.version, resource, {"type": "MODIFIED", "object": o}))
                for k, o in old.items():
                    if k not in new:
                        gone = copy.deepcopy(o)
                        gone["metadata"]["resourceVersion"] = v
                        self.events.append((self.version, resource, {"type": "DELETED", "object": gone}))
                self.current[resource] = new
            self.cond.notify_all()

    def _follow(self) -> None:
        while True:
            time.sleep(0.02)
            try:
                self.reload()
            except (OSError, ValueError):
                pass


def main() -> None:
    port, state_path, cert, key, token_file = sys.argv[1:6]
    state = State(state_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            with open(token_file) as f:
                token = f.read().strip()
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._send(401, {"kind": "Status", "code": 401, "message": "Unauthorized"})
                return
            url = urllib.parse.urlparse(self.path)
            if url.path not in PATHS:
                self._send(404, {"kind": "Status", "code": 404})
                return
            resource, kind = PATHS[url.path]
            q = dict(urllib.parse.parse_qsl(url.query))
            if q.get("watch") in ("1", "true"):
                self._watch(resource, int(q.get("resourceVersion") or 0), float(q.get("timeoutSeconds", "30")))
                return
            with state.cond:
                items, version = list(state.current[resource].values()), str(state.version)
            self._send(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": version},
                             "items": items})

        def _watch(self, resource: str, since: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            sent = len([e for e in state.events if e[0] <= since])
            while time.monotonic() < deadline:
                with state.cond:
                    new = state.events[sent:]
                    if not new:
                        state.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                        continue
                sent += len(new)
                try:
                    for _v, r, event in new:
                        if r == resource:
                            self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()
                except OSError:
                    return

        def _send(self, code: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
