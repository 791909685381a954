"""DragonflyDB stream store: XADD with explicit ids (the offset is the id), Lua for atomicity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis

from services.common.store.base import Keys, StoreError
from services.common.store.dragonfly import (
    evalsha_many,
    load_script,
    store_error,
    translate_errors,
)
from services.common.store.pipe import CommandPipe, bulk
from services.history.store.base import (
    AppendResult,
    NewEvent,
    ReadResult,
    StoredEvent,
    StreamLimits,
)

LUA = Path(__file__).parent / "lua"


class DragonflyStreamStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, limits: StreamLimits,
                 *, pipe: CommandPipe | None = None) -> None:
        """`pipe`: appends (`append`, `append_many`) go over this pipelined connection instead of
        the pooled client (services/common/store/pipe.py); reads and script loads always use
        the client."""
        self._r = client
        self._pipe = pipe
        self._keys = keys
        self._limits = limits
        self._append = load_script(client, LUA / "append.lua")
        self._read = load_script(client, LUA / "read.lua")
        # What every append call of this store repeats, packed once (the pipe's path).
        self._evalsha_head = bulk(b"EVALSHA") + bulk(self._append.sha.encode())
        self._limit_args = b"".join(bulk(b"%d" % v) for v in (
            limits.max_len, int(limits.ttl_s * 1000), int(limits.meta_ttl_s * 1000),
            int(limits.idempotency_window_s * 1000)))

    def _append_call(self, channel: str, events: Sequence[NewEvent],
                     new_epoch: str) -> tuple[list[str], list[str | bytes | int]]:
        k = self._keys
        keys = [k.channel(channel, "meta"), k.channel(channel, "stream")]
        keys += [k.channel(channel, "idem:" + ev.id) for ev in events]
        lim = self._limits
        args: list[str | bytes | int] = [
            new_epoch, lim.max_len, int(lim.ttl_s * 1000), int(lim.meta_ttl_s * 1000),
            int(lim.idempotency_window_s * 1000),
        ]
        for ev in events:
            args += [ev.body, ev.priority]
        return keys, args

    async def append(
        self, channel: str, events: Sequence[NewEvent], *, new_epoch: str,
    ) -> AppendResult:
        """`append_many` of one channel (its errors already translated), raised."""
        (result,) = await self.append_many([(channel, events)], new_epoch=new_epoch)
        if isinstance(result, StoreError):
            raise result
        return result

    @translate_errors
    async def append_many(
        self, appends: Sequence[tuple[str, Sequence[NewEvent]]], *, new_epoch: str,
    ) -> list[AppendResult | StoreError]:
        if self._pipe is not None:
            replies = await self._piped(self.pack_appends(appends, new_epoch), len(appends))
        else:
            calls = [self._append_call(channel, events, new_epoch) for channel, events in appends]
            replies = await evalsha_many(self._r, self._append, calls)  # idempotent by event id
        return [store_error(r) if isinstance(r, Exception) else _append_result(r) for r in replies]

    def pack_appends(self, appends: Sequence[tuple[str, Sequence[NewEvent]]], new_epoch: str) -> bytes:
        """The EVALSHA commands of `_append_call`, packed straight from the events: the same
        bytes as `pack_evalsha`, without a list of arguments and a type test per argument."""
        head, limits = self._evalsha_head, self._limit_args
        epoch = bulk(new_epoch.encode())
        prefix = self._keys.prefix.encode()
        out: list[bytes] = []
        for channel, events in appends:
            n = len(events)
            tag = b"%s:{%s}:" % (prefix, channel.encode())
            nkeys = b"%d" % (2 + n)
            out.append(b"*%d\r\n%s$%d\r\n%s\r\n" % (3 + 2 + n + 5 + 2 * n, head, len(nkeys), nkeys))
            out.append(bulk(tag + b"meta"))
            out.append(bulk(tag + b"stream"))
            out.extend(bulk(tag + b"idem:" + ev.id.encode()) for ev in events)
            out.append(epoch)
            out.append(limits)
            for ev in events:
                priority = b"%d" % ev.priority
                out.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(ev.body), ev.body, len(priority), priority))
        return b"".join(out)

    async def _piped(self, packed: bytes, count: int) -> list[Any]:
        """`evalsha_many` on the pipe: a store that lost its scripts gets the script again
        (through the client) and the batch runs once more, which its event ids make safe."""
        assert self._pipe is not None
        replies = await self._pipe.execute(packed, count)
        if any(isinstance(r, hiredis.ReplyError) and str(r).startswith("NOSCRIPT") for r in replies):
            await self._r.script_load(self._append.script)
            replies = await self._pipe.execute(packed, count)
        return replies

    @translate_errors
    async def read(
        self, channel: str, since_offset: int, limit: int, *, latest: bool = False,
    ) -> ReadResult:
        keys = [self._keys.channel(channel, "meta"), self._keys.channel(channel, "stream")]
        raw = await self._read(keys=keys, args=[since_offset, limit, "1" if latest else "0"])
        epoch = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        events = [
            StoredEvent(int(raw[i]), bytes(raw[i + 1]), int(raw[i + 2]))
            for i in range(3, len(raw), 3)
        ]
        return ReadResult(epoch, int(raw[1]), int(raw[2]), events)


def _append_result(raw: list[Any]) -> AppendResult:
    """append.lua's reply: {epoch, offset1, dup1, offset2, dup2, ..., trimmed}."""
    epoch = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
    pairs = raw[1:-1]
    return AppendResult(epoch, [int(x) for x in pairs[0::2]], [bool(int(x)) for x in pairs[1::2]],
                        trimmed=int(raw[-1]))
