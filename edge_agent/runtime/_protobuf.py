"""The protobuf base-128 varint, read without the protobuf package (ONNX files are protobuf)."""

from __future__ import annotations

import mmap


class ProtobufError(Exception):
    """Not readable as protobuf: ``truncated`` when the bytes end inside a varint."""

    def __init__(self, truncated: bool) -> None:
        super().__init__("truncated varint" if truncated else "varint longer than 64 bits")
        self.truncated = truncated


def varint(buf: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    """The varint starting at ``pos`` and the position after it."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtobufError(truncated=True)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError(truncated=False)
