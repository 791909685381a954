"""Length-prefixed frames (services/common/framing.py) over a local socket pair: reassembly across
arbitrary chunks, the size limit, back-pressure on a slow reader, heartbeats and the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from services.common.framing import HEADER, FrameProtocol, FrameTooLargeError, LinkClosedError, frame

HEARTBEAT = b""


def protocol(tu: float, **kw: object) -> FrameProtocol:
    options: dict[str, object] = {"max_frame_bytes": 1024, "heartbeat": HEARTBEAT,
                                  "heartbeat_s": 0.05 * tu, "idle_timeout_s": 0.25 * tu}
    options.update(kw)
    return FrameProtocol(**options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def raw_peer(tu: float, **kw: object) -> AsyncIterator[tuple[FrameProtocol, socket.socket]]:
    """A FrameProtocol on one end of a socket pair; the other end is a plain socket."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, proto = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: protocol(tu, **kw), ours)
    try:
        yield proto, theirs
    finally:
        transport.abort()
        theirs.close()


async def send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def test_frames_split_anywhere_are_reassembled_in_order(tu: float) -> None:
    payloads = [b"", b"a", b"hello", bytes(range(256)) * 3]
    stream = b"".join(frame(p) for p in payloads)
    async with raw_peer(tu) as (proto, sock):
        for i in range(len(stream)):  # one byte at a time: every split point
            await send(sock, stream[i:i + 1])
        got: list[bytes] = []
        async with asyncio.timeout(2 * tu):
            while len(got) < len(payloads):
                got += await proto.read_frames()
        assert got == payloads


async def test_an_announced_frame_over_the_limit_fails_the_link(tu: float) -> None:
    async with raw_peer(tu) as (proto, sock):
        await send(sock, frame(b"fine") + HEADER.pack(1025))
        assert await proto.read_frames() == [b"fine"]
        with pytest.raises(FrameTooLargeError):
            async with asyncio.timeout(2 * tu):
                await proto.read_frames()
        with pytest.raises(LinkClosedError):
            proto.write(b"too late")


async def test_a_silent_peer_is_dropped_after_the_idle_timeout(tu: float) -> None:
    async with raw_peer(tu) as (proto, sock):
        start = asyncio.get_running_loop().time()
        with pytest.raises(LinkClosedError, match="nothing read"):
            async with asyncio.timeout(2 * tu):
                await proto.read_frames()
        assert asyncio.get_running_loop().time() - start >= 0.25 * tu * 0.9
        # and it sent heartbeats (empty frames) meanwhile
        data = await asyncio.get_running_loop().sock_recv(sock, 64)
        assert data.startswith(frame(HEARTBEAT))


async def test_two_idle_ends_stay_up_on_heartbeats(tu: float) -> None:
    a, b = socket.socketpair()
    loop = asyncio.get_running_loop()
    ta, pa = await loop.connect_accepted_socket(lambda: protocol(tu), a)
    tb, pb = await loop.connect_accepted_socket(lambda: protocol(tu), b)
    try:
        await asyncio.sleep(1.0 * tu)  # four idle timeouts without a payload
        pa.write(b"still here")
        async with asyncio.timeout(2 * tu):
            frames: list[bytes] = []
            while b"still here" not in frames:
                frames += await pb.read_frames()
    finally:
        ta.abort()
        tb.abort()


async def test_a_slow_reader_stops_reading_the_socket_until_it_catches_up(tu: float) -> None:
    async with raw_peer(tu, inbox_max=4, idle_timeout_s=10 * tu) as (proto, sock):
        transport = proto._transport
        assert transport is not None
        await send(sock, b"".join(frame(b"x%d" % i) for i in range(10)))
        deadline = asyncio.get_running_loop().time() + 2 * tu
        while transport.is_reading():  # paused once 4 frames wait
            assert asyncio.get_running_loop().time() < deadline, "never paused"
            await asyncio.sleep(0.01)
        frames = await proto.read_frames()
        assert transport.is_reading() and frames[:4] == [b"x0", b"x1", b"x2", b"x3"]


async def test_serve_hands_over_frames_as_they_are_read_those_already_received_first(tu: float) -> None:
    async with raw_peer(tu, idle_timeout_s=10 * tu) as (proto, sock):
        await send(sock, frame(b"early"))
        deadline = asyncio.get_running_loop().time() + 2 * tu
        while not proto._inbox:  # received before anyone serves the link
            assert asyncio.get_running_loop().time() < deadline, "never received"
            await asyncio.sleep(0.01)
        got: list[list[bytes]] = []
        four = asyncio.Event()

        def receiver(frames: list[bytes]) -> None:
            got.append(frames)
            if sum(len(batch) for batch in got) >= 4:
                four.set()

        serving = asyncio.create_task(proto.serve(receiver))
        await asyncio.sleep(0)
        assert got == [[b"early"]]
        stream = frame(b"a") + frame(b"b") + frame(b"c")
        await send(sock, stream[:7])  # "a" whole, "b" cut in two
        await send(sock, stream[7:])
        async with asyncio.timeout(2 * tu):
            await four.wait()
        assert [f for batch in got for f in batch] == [b"early", b"a", b"b", b"c"]
        sock.shutdown(socket.SHUT_WR)  # the peer closes cleanly: serve returns
        async with asyncio.timeout(2 * tu):
            await serving


async def test_a_failing_receiver_fails_the_link_and_serve_raises_its_error(tu: float) -> None:
    def receiver(frames: list[bytes]) -> None:
        if b"bad" in frames:
            raise ValueError("cannot parse")

    async with raw_peer(tu, idle_timeout_s=10 * tu) as (proto, sock):
        serving = asyncio.create_task(proto.serve(receiver))
        await send(sock, frame(b"good") + frame(b"bad"))
        with pytest.raises(ValueError, match="cannot parse"):
            async with asyncio.timeout(2 * tu):
                await serving
        with pytest.raises(LinkClosedError):
            proto.write(b"after the failure")
