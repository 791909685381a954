"""What the edge's connections write and read: prepared frames, the socket interface, corks.

A server frame is unmasked, so the frame around an event is the same bytes for every subscriber:
the hub builds it once (`text_frame`) and each connection writes those bytes straight to its
transport, several queued frames in one write (a `FrameWriter`), instead of building a frame and
making a write() per message per socket.

`ClientSocket` is what a `Connection` needs of its socket. The edge's own WebSocket server
(`wsserver.py`) implements it, is a `FrameWriter`, and is a `HostSocket` (a connection runs on
it without a task until it needs one); `asgisocket.py` adapts Starlette's WebSocket
(another ASGI server, a test client), which has no FrameWriter: frames then go through `send_text`.
No extension is negotiated: prepared frames are written as they are.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol


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


class Disconnected(Exception):
    """The socket is closed (by the peer, by us, or lost): `code` is the close code seen."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FrameWriter(abc.ABC):
    """Writes prepared frames to one connection's transport. An abstract base: the socket that
    owns the transport says whether it is open and writable, and waits for room."""

    __slots__ = ()
    transport: asyncio.WriteTransport

    @property
    @abc.abstractmethod
    def open(self) -> bool:
        """The handshake is done and no close frame was sent or received: data may be written."""

    @property
    @abc.abstractmethod
    def writable(self) -> bool:
        """Open, and the transport's buffer is below its high-water mark."""

    @abc.abstractmethod
    async def wait_writable(self) -> None:
        """Wait until the transport's buffer is below its high-water mark, or the socket is gone."""

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self.transport.get_write_buffer_size()

    def write(self, frames: Sequence[bytes]) -> None:
        """Write whole frames in one call (one syscall when the socket takes them); inside
        `with CORK:` they are held and written with this connection's other frames at its end."""
        mine = CORK.held_for(self)
        if mine is None:
            self.write_now(frames)
        else:
            mine.extend(frames)

    def write_one(self, frame: bytes) -> None:
        """`write((frame,))` without the tuple: the fan-out's path, per subscriber."""
        mine = CORK.held_for(self)
        if mine is None:
            self.transport.write(frame)
        else:
            mine.append(frame)

    def write_now(self, frames: Sequence[bytes]) -> None:
        if len(frames) == 1:
            self.transport.write(frames[0])
        else:
            self.transport.write(b"".join(frames))


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

    def held_for(self, writer: FrameWriter) -> list[bytes] | None:
        """The frames held for `writer` until the cork's end (made on first use); None when not
        corked: write at once."""
        held = self.held
        if held is None:
            return None
        mine = held.get(writer)
        if mine is None:
            mine = held[writer] = []
        return mine

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        held, self.held = self.held, None
        for writer, frames in (held or {}).items():
            if writer.open:  # closed meanwhile: the client recovers what it missed
                writer.write_now(frames)


CORK = Cork()  # one per process: the event loop's thread is the only writer


class ClientSocket(Protocol):
    """A WebSocket as a Connection uses it, whichever server carries it."""

    @property
    def frames(self) -> FrameWriter | None:
        """Where prepared frames go straight to the transport; None: use send_text."""

    async def accept(self) -> None:
        """Complete the opening handshake."""

    async def receive(self) -> str | bytes:
        """The next message (str: text, bytes: binary); raises Disconnected once closed."""

    async def send_text(self, text: str) -> None:
        """Send one text message; raises Disconnected when the socket is closed."""

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame after what the socket still holds; a no-op once closed."""


class MessageHandler(Protocol):
    """Takes a socket's messages as they are read, before any task would (see `HostSocket`)."""

    def on_message(self, message: str | bytes) -> bool:
        """A message was read: True when handled, False to queue it for `receive()`."""

    def on_disconnect(self) -> None:
        """The socket is closed (by the peer, by us, or lost)."""


class Released(Exception):
    """Raised by `receive()` in a task that `HostSocket.release_reader` let go."""


class HostSocket(ClientSocket, Protocol):
    """A ClientSocket whose server calls a handler as it reads, and runs tasks for it: a
    connection can then go without a task of its own until it needs one (the edge's server)."""

    handler: MessageHandler | None
    on_ping: Callable[[], None] | None  # called after each keepalive ping the socket sends

    def spawn(self, coro: Coroutine[Any, Any, bool | None]) -> None:
        """Run `coro` as this socket's task (the server waits for it on shutdown); the socket
        is dropped when it ends without a close frame out, unless it returns True (the task was
        let go by `release_reader` and the connection lives on without it)."""

    def release_reader(self) -> bool:
        """End a task's wait in `receive()` with `Released`: True when a task was waiting, with
        nothing unread, on a socket not closed (messages then go to `handler` again)."""
