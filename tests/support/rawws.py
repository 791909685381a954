"""A deliberately minimal WebSocket client on a plain socket, for a reader that truly stops
reading: unlike a library client it has no background reader draining the socket, and its
receive window is tiny, so the server's send path backs up at once."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any


def _masked_text(text: str) -> bytes:
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    else:
        header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RawWebSocket:
    def __init__(self, port: int, path: str, *, rcvbuf: int = 4096, timeout_s: float = 30.0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout_s)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.decode(errors="replace"))
        self.close_code: int | None = None

    def send_json(self, obj: Any) -> None:
        self.sock.sendall(_masked_text(json.dumps(obj)))

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("socket closed")
            out += chunk
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exact(8))[0]
        return b0 & 0x0F, self._exact(n)

    def read_until_close(self) -> list[dict[str, Any]]:
        """Every text frame until the server's close frame (its code lands in close_code)."""
        frames = []
        while True:
            opcode, payload = self.recv_frame()
            if opcode == 0x1:
                frames.append(json.loads(payload))
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return frames

    def close(self) -> None:
        self.sock.close()
