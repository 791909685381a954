"""Prepared frames are what the websockets library's own parser reads as text frames."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from services.edge.wsproto import payload_of, text_frame


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
