"""Splitting multipart/related bodies part by part (connectors.dicom.multipart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from connectors.dicom.multipart import boundary, split_parts, split_parts_async


class Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.current: bytearray | None = None

    def begin(self) -> None:
        self.current = bytearray()

    def write(self, data: bytes) -> None:
        assert self.current is not None, "write before begin"
        self.current += data

    def end(self) -> None:
        assert self.current is not None
        self.parts.append(bytes(self.current))
        self.current = None


def _body(parts: list[bytes], marker: str = "xYz") -> bytes:
    out = b""
    for p in parts:
        out += f"--{marker}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{marker}--\r\n".encode()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_parts_arrive_whole_whatever_the_chunking(chunk: int) -> None:
    parts = [b"DICM" * 50, b"\x00\r\n--not-a-boundary\r\n" * 3, b""]
    sink = Sink()
    split_parts(
        _chunks(_body(parts), chunk), 'multipart/related; type="application/dicom"; boundary=xYz', sink
    )
    assert sink.parts == parts


def test_a_plain_body_is_one_part() -> None:
    sink = Sink()
    split_parts(_chunks(b"abcdef", 2), "application/dicom", sink)
    assert sink.parts == [b"abcdef"]


def test_async_split_matches_sync() -> None:
    parts = [b"first", b"second part"]

    async def gen() -> AsyncIterator[bytes]:
        for c in _chunks(_body(parts, "b0undary"), 3):
            yield c

    sink = Sink()
    asyncio.run(split_parts_async(gen(), 'multipart/related; boundary="b0undary"', sink))
    assert sink.parts == parts


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary="a b"', "a b"),
        ("Multipart/Related;boundary=abc", "abc"),
        ("multipart/related", None),
        ("application/json; boundary=abc", None),
    ],
)
def test_boundary(content_type: str, expected: str | None) -> None:
    assert boundary(content_type) == expected
