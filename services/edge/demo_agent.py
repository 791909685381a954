"""The demo agent (demo mode only): answers a chat message that mentions `@agent` by streaming a
reply into the session the way an AI agent runtime would, through the normal publish path.

Each run is an owned task; at most `max_runs` run at once per edge (a mention beyond that is
logged and ignored), and every run is cancelled on shutdown. The sequence of durable events
is the client contract: status thinking, a tool call start and complete, status streaming,
the reply word by word (`chat_message_chunk`), `chat_message_complete`, status idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from services.common import wire
from services.common.tasks import cancel_and_wait
from services.edge.domain import Event

log = structlog.get_logger("switchboard.edge")
AGENT_MENTION = "@agent"
AGENT_USER = "agent"
CHUNK_INTERVAL_S = 0.03
Publish = Callable[[str, Event], Awaitable[object]]


def reply_text(content: str) -> str:
    said = content.replace(AGENT_MENTION, "").strip()
    return f"You said: {said}. This reply was streamed word by word."


def reply_pieces(text: str) -> list[str]:
    """Words with their trailing space; joined they give the text back."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


class DemoAgent:
    def __init__(self, publish: Publish, *, max_runs: int, chunk_interval_s: float = CHUNK_INTERVAL_S) -> None:
        self._publish = publish
        self._max_runs = max_runs
        self._interval_s = chunk_interval_s
        self._runs: set[asyncio.Task[None]] = set()

    def trigger(self, channel: str, content: str) -> bool:
        """Start a run for the session channel; False when the edge already runs `max_runs`."""
        if len(self._runs) >= self._max_runs:
            log.warning("demo_agent_busy", channel=channel, runs=len(self._runs))
            return False
        task = asyncio.create_task(self._run(channel, content), name="demo-agent")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return True

    async def aclose(self) -> None:
        for task in list(self._runs):
            await cancel_and_wait(task)

    async def _run(self, channel: str, content: str) -> None:
        try:
            await self._script(channel, content)
        except Exception as e:  # top of the task: log; the session shows whatever arrived
            log.warning("demo_agent_failed", channel=channel, error=str(e))

    async def _script(self, channel: str, content: str) -> None:
        call_id, message_id = "call-" + wire.new_id()[-12:], "msg-" + wire.new_id()[-12:]
        await self._send(channel, "agent_status_update", {"user_id": AGENT_USER, "status": "thinking", "progress": 0})
        await self._send(channel, "tool_call_start", {"tool_call_id": call_id, "tool": "lookup",
                                                      "arguments": {"query": content}})
        await self._send(channel, "tool_call_complete", {"tool_call_id": call_id, "tool": "lookup", "result": "ok"})
        await self._send(channel, "agent_status_update", {"user_id": AGENT_USER, "status": "streaming", "progress": 50})
        pieces = reply_pieces(reply_text(content))
        for i, piece in enumerate(pieces):
            await self._send(channel, "chat_message_chunk", {"message_id": message_id, "index": i,
                                                             "content": piece, "role": "assistant"})
            await asyncio.sleep(self._interval_s)
        await self._send(channel, "chat_message_complete", {"message_id": message_id, "content": "".join(pieces),
                                                            "role": "assistant"})
        await self._send(channel, "agent_status_update", {"user_id": AGENT_USER, "status": "idle", "progress": 100})

    async def _send(self, channel: str, event_type: str, payload: dict[str, Any]) -> None:
        eid = wire.new_id()
        body = wire.encode_body(event_type, payload, event_id=eid, channel=channel,
                                session_id=channel.partition(":")[2], user_id=AGENT_USER)
        await self._publish(channel, Event(id=eid, type=event_type, body=body,
                                           priority=wire.priority_of(event_type)))
