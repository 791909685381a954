"""The edge's WebSocket protocol: uvicorn's websockets-sansio protocol, plus prepared frames.

A server frame is unmasked, so the frame around an event is the same bytes for every subscriber:
the hub builds it once (`text_frame`) and each connection writes those bytes straight to its
transport, several queued frames in one write, instead of going through the ASGI `send` path
(starlette -> uvicorn -> websockets, a frame built and a write() made per message per socket).

The protocol offers this as the ASGI scope extension "switchboard.frames" (a `FrameWriter`).
Starlette keeps the routing, the handshake, receiving and closing; only data frames take the
short path. Without the extension (another server, a test client) the connection falls back to
`websocket.send`. permessage-deflate must be off: prepared frames are not compressed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "switchboard.frames"


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 section 5.2) carrying `payload` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def payload_of(frame: bytes) -> bytes:
    """The payload of a frame made by `text_frame`."""
    n = frame[1] & 0x7F
    return frame[2 + (2 if n == 126 else 8 if n == 127 else 0):]


class FrameWriter:
    """Writes prepared frames to one connection's transport."""

    __slots__ = ("_p",)

    def __init__(self, protocol: SwitchboardWebSocketProtocol) -> None:
        self._p = protocol

    @property
    def open(self) -> bool:
        """The handshake is done and no close frame was sent or received: data may be written."""
        p = self._p
        return p.handshake_complete and not (p.close_sent or p.disconnected or p.transport.is_closing())

    @property
    def writable(self) -> bool:
        """Open, and the transport's buffer is below its high-water mark."""
        return self._p.writable.is_set() and self.open

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self._p.transport.get_write_buffer_size()

    async def wait_writable(self) -> None:
        await self._p.writable.wait()  # set again on resume_writing and on connection_lost

    def write(self, frames: Sequence[bytes]) -> None:
        """Write whole frames in one call (one syscall when the socket takes them); inside
        `with CORK:` they are held and written with this connection's other frames at its end."""
        held = CORK.held
        if held is not None:
            mine = held.get(self)
            if mine is None:
                held[self] = list(frames)
            else:
                mine.extend(frames)
            return
        self.write_now(frames)

    def write_now(self, frames: Sequence[bytes]) -> None:
        if len(frames) == 1:
            self._p.transport.write(frames[0])
        else:
            self._p.transport.write(b"".join(frames))


class Cork:
    """Coalesces the frames written during one synchronous stretch of code, per connection.

    The edge corks while it hands on one batch of deliveries from a router: a connection that
    gets several events of the batch (a streamed reply) gets them in one write() instead of one
    each. Nothing awaits inside, so nothing else can write to the socket in between, and the
    frames leave in the order they were written. Nested corks flush at the outermost exit.
    """

    __slots__ = ("_depth", "held")

    def __init__(self) -> None:
        self.held: dict[FrameWriter, list[bytes]] | None = None
        self._depth = 0

    def __enter__(self) -> Cork:
        if self._depth == 0:
            self.held = {}
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        held, self.held = self.held, None
        for writer, frames in (held or {}).items():
            if writer.open:  # closed meanwhile: the client recovers what it missed
                writer.write_now(frames)


CORK = Cork()  # one per process: the event loop's thread is the only writer


class SwitchboardWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that also offers a FrameWriter to the app."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # an accepted upgrade: the ASGI task is created but has not run
            scope["extensions"][EXTENSION] = FrameWriter(self)
