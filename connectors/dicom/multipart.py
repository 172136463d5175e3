"""``multipart/related`` bodies (DICOMweb WADO-RS answers, STOW-RS requests) split part by part.

The body is fed in chunks as it arrives and each part goes to a `PartSink`
(a file per part, say), so no instance is ever held whole in memory. A body
that is not multipart is one part. Parsing is python-multipart's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Protocol

from python_multipart.multipart import MultipartParser

__all__ = ["PartSink", "boundary", "split_parts", "split_parts_async"]


class PartSink(Protocol):
    """Receives the parts of a body: ``begin``, ``write`` ..., ``end`` for each."""

    def begin(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def end(self) -> None: ...


def boundary(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart Content-Type, or None for any other type."""
    if not content_type.lower().startswith("multipart/"):
        return None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip().strip('"')
    return None


class _Feed:
    """One body being split: ``feed`` each chunk, then ``close``."""

    def __init__(self, content_type: str, sink: PartSink) -> None:
        self.sink = sink
        found = boundary(content_type)
        self.parser: MultipartParser | None = None
        if found is None:
            sink.begin()
            return

        def on_part_data(data: bytes, start: int, end: int) -> None:
            sink.write(data[start:end])

        self.parser = MultipartParser(
            found, {"on_part_begin": sink.begin, "on_part_data": on_part_data, "on_part_end": sink.end}
        )

    def feed(self, chunk: bytes) -> None:
        if self.parser is None:
            self.sink.write(chunk)
        else:
            self.parser.write(chunk)

    def close(self) -> None:
        if self.parser is None:
            self.sink.end()
        else:
            self.parser.finalize()


def split_parts(chunks: Iterator[bytes], content_type: str, sink: PartSink) -> None:
    """Feed a multipart/related body (or a plain body, as one part) into ``sink``."""
    feed = _Feed(content_type, sink)
    for chunk in chunks:
        feed.feed(chunk)
    feed.close()


async def split_parts_async(chunks: AsyncIterator[bytes], content_type: str, sink: PartSink) -> None:
    """`split_parts` for a body that arrives asynchronously (a request to the service)."""
    feed = _Feed(content_type, sink)
    async for chunk in chunks:
        feed.feed(chunk)
    feed.close()
