"""Traffic for the NetworkPolicy netns tests (stdlib only), run inside a pod's namespace.

    netpol_probe.py serve PORT...           TCP and UDP echo servers on every PORT (all addresses);
                                            prints "ready" when listening
    netpol_probe.py probe TIMEOUT SPEC...   SPEC = proto:address:port; one JSON list of booleans on
                                            stdout: did a request get its echo back within TIMEOUT s
    netpol_probe.py hold ADDRESS PORT       one TCP connection: prints "connected", then for every
                                            line on stdin sends it and prints the echo ("dead" when
                                            no echo comes back within 2 s)
    netpol_probe.py stream SECONDS SPEC...  for SECONDS: new TCP/UDP requests to every SPEC in turn
                                            (2 s timeout each) plus one long TCP connection echoing
                                            a message every 10 ms; prints {"ok": n, "failed": [...]}
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(ports: list[int]) -> None:
    def tcp_conn(conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rwb", buffering=0)
            for line in f:
                f.write(line)

    def tcp(port: int) -> None:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", port))
        srv.listen(128)
        ready.release()
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=tcp_conn, args=(conn,), daemon=True).start()

    def udp(port: int) -> None:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("::", port))
        ready.release()
        while True:
            data, peer = srv.recvfrom(2048)
            srv.sendto(data, peer)

    ready = threading.Semaphore(0)
    for port in ports:
        threading.Thread(target=tcp, args=(port,), daemon=True).start()
        threading.Thread(target=udp, args=(port,), daemon=True).start()
    for _ in range(2 * len(ports)):
        ready.acquire()
    print("ready", flush=True)
    threading.Event().wait()


def request(spec: str, timeout: float) -> bool:
    proto, rest = spec.split(":", 1)
    addr, port = rest.rsplit(":", 1)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(_family(addr), kind) as s:
        s.settimeout(timeout)
        try:
            msg = f"hello {spec}\n".encode()
            if proto == "tcp":
                s.connect((addr, int(port)))
                s.sendall(msg)
                return s.recv(100) == msg
            s.sendto(msg, (addr, int(port)))
            return s.recv(100) == msg
        except OSError:
            return False


def probe(timeout: float, specs: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        print(json.dumps(list(pool.map(lambda s: request(s, timeout), specs))), flush=True)


def hold(addr: str, port: int) -> None:
    s = socket.create_connection((addr, port), timeout=5)
    s.settimeout(2)
    print("connected", flush=True)
    for line in sys.stdin:
        try:
            s.sendall(line.encode())
            got = s.recv(200).decode()
            print(got.strip() if got else "dead", flush=True)
        except OSError:
            print("dead", flush=True)


def stream(seconds: float, specs: list[str]) -> None:
    ok, failed = 0, []
    first = next(s for s in specs if s.startswith("tcp:"))
    _, addr, port = first.split(":", 1)[0], *first.split(":", 1)[1].rsplit(":", 1)
    long = socket.create_connection((addr, int(port)), timeout=5)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        spec = specs[i % len(specs)]
        i += 1
        if request(spec, 2.0):
            ok += 1
        else:
            failed.append(f"{spec} at {seconds - (end - time.monotonic()):.2f}s")
        try:
            long.sendall(b"tick\n")
            if long.recv(10) != b"tick\n":
                failed.append("long connection: bad echo")
            else:
                ok += 1
        except OSError as exc:
            failed.append(f"long connection: {exc}")
            break
        time.sleep(0.01)
    print(json.dumps({"ok": ok, "failed": failed}), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve([int(p) for p in args])
    elif cmd == "probe":
        probe(float(args[0]), args[1:])
    elif cmd == "hold":
        hold(args[0], int(args[1]))
    elif cmd == "stream":
        stream(float(args[0]), args[1:])
    else:
        sys.exit(f"unknown command {cmd}")
