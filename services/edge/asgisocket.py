"""A ClientSocket over Starlette's WebSocket: the edge behind any ASGI server (or a test client).

The edge's own server (`wsserver.py`) is the default; this adapter is the fallback, with no
FrameWriter, so every frame goes through ASGI `websocket.send`.
"""

from __future__ import annotations

from starlette.websockets import WebSocket, WebSocketDisconnect

from services.edge.wsproto import Disconnected, FrameWriter


class AsgiSocket:
    __slots__ = ("_ws",)

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    @property
    def frames(self) -> FrameWriter | None:
        return None

    async def accept(self) -> None:
        await self._ws.accept()

    async def receive(self) -> str | bytes:
        try:
            message = await self._ws.receive()
        except RuntimeError as e:  # starlette: receive after the disconnect message
            raise Disconnected(1006) from e
        if message["type"] == "websocket.disconnect":
            raise Disconnected(int(message.get("code", 1000)))
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes = message.get("bytes") or b""
        return data

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as e:  # RuntimeError: already closed
            raise Disconnected(getattr(e, "code", 1006)) from e

    async def close(self, code: int, reason: str = "") -> None:
        await self._ws.close(code, reason)
