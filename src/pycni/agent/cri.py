"""The container runtime's own list of pod sandboxes: CRI `RuntimeService/ListPodSandbox`, stdlib only.

CRI is gRPC over a unix socket (containerd: /run/containerd/containerd.sock, CRI-O: /var/run/crio/crio.sock).
gRPC is HTTP/2 without TLS ("h2c" with prior knowledge); one unary call needs very little of it, so this
module speaks exactly that much instead of pulling grpcio into the bundle:

* the client preface, one SETTINGS frame (a 16 MiB stream window) and a connection WINDOW_UPDATE;
* one HEADERS frame whose block is HPACK "literal header field without indexing - new name" entries
  (RFC 7541 section 6.2.2, no Huffman coding): nothing to decode on our side;
* one DATA frame: the gRPC message (flag 0, 4-byte length, the protobuf of an empty ListPodSandboxRequest);
* then frames are read until the stream ends; SETTINGS and PING are acknowledged, DATA collected.

The server's headers are not decoded (they may be Huffman coded). That is enough to tell success from
failure for a unary call: a gRPC server answers an error with headers only ("Trailers-Only", no DATA),
and success with exactly one length-prefixed message followed by trailers. Anything else raises CRIError.
The message is decoded with a minimal protobuf reader: ListPodSandboxResponse.items (field 1), each a
PodSandbox with id (1) and state (3: 0 = SANDBOX_READY, 1 = SANDBOX_NOTREADY).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
METHOD = "/runtime.v1.RuntimeService/ListPodSandbox"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
WINDOW = 1 << 24
STREAM = 1
MAX_ANSWER = 64 << 20
READY, NOT_READY = 0, 1


class CRIError(Exception):
    """The runtime could not be asked, or did not answer the call with a message."""


@dataclass(frozen=True)
class Sandbox:
    id: str
    state: int  # READY or NOT_READY


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _header_block(headers: list[tuple[str, str]]) -> bytes:
    block = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        block += b"\x00" + _hpack_int(len(n)) + n + _hpack_int(len(v)) + v
    return block


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CRIError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message: int for varints, bytes for the rest."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise CRIError("truncated protobuf field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise CRIError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


def parse_sandboxes(message: bytes) -> list[Sandbox]:
    """A ListPodSandboxResponse -> its sandboxes (id and state)."""
    out = []
    for num, wire, item in _fields(message):
        if num != 1 or wire != 2:
            continue
        sid, state = "", READY
        for f, w, v in _fields(item):
            if f == 1 and w == 2:
                sid = v.decode("utf-8", "replace")
            elif f == 3 and w == 0:
                state = v
        if not sid:
            raise CRIError("a PodSandbox without an id")
        out.append(Sandbox(sid, state))
    return out


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise CRIError("the runtime closed the connection")
        buf += chunk
    return buf


def call(path: str, method: str, request: bytes, timeout: float = 10.0) -> bytes:
    """One unary gRPC call over the unix socket `path`: the response message's bytes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise CRIError(f"cannot connect to the runtime at {path}: {exc}") from None
        headers = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "localhost"),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, WINDOW))
                     + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW))
                     + _frame(HEADERS, END_HEADERS, STREAM, _header_block(headers))
                     + _frame(DATA, END_STREAM, STREAM, b"\x00" + struct.pack(">I", len(request)) + request))
        body, header_frames, total = b"", 0, 0
        while True:
            head = _read_exact(sock, 9)
            size = int.from_bytes(head[:3], "big")
            ftype, flags, stream = head[3], head[4], int.from_bytes(head[5:], "big") & 0x7FFFFFFF
            total += size
            if total > MAX_ANSWER:
                raise CRIError("the runtime's answer is too large")
            payload = _read_exact(sock, size)
            if ftype == SETTINGS and not flags & ACK:
                sock.sendall(_frame(SETTINGS, ACK, 0))
            elif ftype == PING and not flags & ACK:
                sock.sendall(_frame(PING, ACK, 0, payload))
            elif ftype == GOAWAY and stream == 0:
                raise CRIError(f"the runtime sent GOAWAY (error code {int.from_bytes(payload[4:8], 'big')})")
            elif stream != STREAM:
                continue
            elif ftype == RST_STREAM:
                raise CRIError(f"the runtime reset the call (error code {int.from_bytes(payload[:4], 'big')})")
            elif ftype == DATA:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                body += payload
            elif ftype == HEADERS:
                header_frames += 1
            if stream == STREAM and flags & END_STREAM and ftype in (DATA, HEADERS):
                break
    except TimeoutError:
        raise CRIError(f"the runtime at {path} did not answer {method} in {timeout:g}s") from None
    except OSError as exc:
        raise CRIError(f"talking to the runtime at {path}: {exc}") from None
    finally:
        sock.close()
    if len(body) < 5:
        raise CRIError(f"the runtime answered {method} with an error (no message; see its log)")
    if body[0] != 0:
        raise CRIError("the runtime's answer is compressed, which was not asked for")
    size = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + size or header_frames < 2:
        raise CRIError(f"the runtime's answer to {method} is incomplete ({len(body)} bytes, "
                       f"{header_frames} header frames)")
    return body[5:]


def list_pod_sandboxes(path: str = DEFAULT_SOCKET, timeout: float = 10.0) -> list[Sandbox]:
    """Every pod sandbox the runtime knows, in any state (an empty ListPodSandboxRequest: no filter)."""
    return parse_sandboxes(call(path, METHOD, b"", timeout))
