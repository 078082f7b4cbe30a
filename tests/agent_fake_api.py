"""A tiny fake Kubernetes API server for the agent's --kube tests (stdlib only; run it inside a test
namespace, it listens on 127.0.0.1 only).

    python agent_fake_api.py PORT NODES_JSON CERT KEY TOKEN_FILE

GET /api/v1/nodes             -> a v1.NodeList of the objects in NODES_JSON (re-read every request);
                                 resourceVersion = the file's mtime in ns
GET /api/v1/nodes?watch=1&... -> holds until the file changes (then one MODIFIED event) or timeoutSeconds
Requests need `Authorization: Bearer <TOKEN_FILE content>`. Prints "ready" when listening.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import sys
import time
import urllib.parse


def main() -> None:
    port, nodes_path, cert, key, token_file = sys.argv[1:6]

    def version() -> str:
        return str(os.stat(nodes_path).st_mtime_ns)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            with open(token_file) as f:
                token = f.read().strip()
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._send(401, {"kind": "Status", "code": 401, "message": "Unauthorized"})
                return
            url = urllib.parse.urlparse(self.path)
            if url.path != "/api/v1/nodes":
                self._send(404, {"kind": "Status", "code": 404})
                return
            q = dict(urllib.parse.parse_qsl(url.query))
            if q.get("watch") in ("1", "true"):
                deadline = time.monotonic() + float(q.get("timeoutSeconds", "30"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                while time.monotonic() < deadline:
                    if version() != q.get("resourceVersion"):
                        self.wfile.write(json.dumps({"type": "MODIFIED", "object": {"kind": "Node"}}).encode() + b"\n")
                        self.wfile.flush()
                        return
                    time.sleep(0.05)
                return
            with open(nodes_path) as f:
                items = json.load(f)
            self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": version()},
                             "items": items})

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
