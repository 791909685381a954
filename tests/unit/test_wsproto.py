"""Prepared frames are what the websockets library's own parser reads as text frames."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from services.edge.wsproto import CORK, FrameWriter, payload_of, text_frame


def parse_all(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("incomplete frame")
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_a_prepared_frame_parses_as_one_text_frame(size: int) -> None:
    payload = ('{"x":"' + "é" * max(0, (size - 8) // 2) + '"}').encode()
    first, second = parse_all(text_frame(payload) + text_frame(b'{"n":2}'))
    assert (first.opcode, first.fin, first.data) == (Opcode.TEXT, True, payload)
    assert (second.opcode, second.data) == (Opcode.TEXT, b'{"n":2}')
    assert payload_of(text_frame(payload)) == payload


class RecordingTransport:
    """Another implementation of the transport surface FrameWriter uses: records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


class RecordingWriter(FrameWriter):
    """A FrameWriter over the recording transport: open until the transport is closing."""

    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport = RecordingTransport()  # type: ignore[assignment]

    @property
    def open(self) -> bool:
        return not self.transport.is_closing()

    @property
    def writable(self) -> bool:
        return self.open

    async def wait_writable(self) -> None:
        return None


def writer() -> tuple[FrameWriter, RecordingTransport]:
    w = RecordingWriter()
    return w, w.transport  # type: ignore[return-value]


def test_a_cork_writes_each_connections_frames_once_in_order() -> None:
    (a, ta), (b, tb) = writer(), writer()
    frames = [text_frame(f'{{"n":{i}}}'.encode()) for i in range(5)]
    with CORK:
        a.write(frames[:1])
        b.write(frames[:1])
        with CORK:  # nested: flushed only at the outermost exit
            a.write(frames[1:3])
        a.write(frames[3:])
        assert ta.writes == [] and tb.writes == []
    assert ta.writes == [b"".join(frames)]
    assert tb.writes == [frames[0]]
    assert [f.data for f in parse_all(ta.writes[0])] == [payload_of(f) for f in frames]


def test_without_a_cork_frames_go_straight_out_and_a_closed_connection_gets_nothing() -> None:
    (a, ta), (b, tb) = writer(), writer()
    a.write([text_frame(b'{"n":1}')])
    assert ta.writes == [text_frame(b'{"n":1}')]
    with CORK:
        b.write([text_frame(b'{"n":2}')])
        tb.closing = True  # closed before the cork ends
    assert tb.writes == []
