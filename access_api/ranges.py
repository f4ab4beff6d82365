"""HTTP byte ranges (RFC 9110 §14) over an in-memory body, for seekable segment playback."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "Unsatisfiable", "parse_range"]

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    """The Range header names no byte of the body (answer 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, total: int) -> str:
        return f"bytes {self.start}-{self.end}/{total}"


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """The single byte range asked for, or None to send the whole body.

    Multiple ranges are answered with the whole body (allowed by RFC 9110; players ask for
    one). A syntactically invalid header is ignored, as the RFC says; a valid one that misses
    the body raises :class:`Unsatisfiable`.
    """
    if not header or not header.startswith("bytes="):
        return None
    specs = header[len("bytes=") :].split(",")
    if len(specs) != 1:
        return None
    match = _SPEC.match(specs[0])
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise Unsatisfiable
        return ByteRange(max(0, total - suffix), total - 1) if total else _none()
    start = int(first)
    if start >= total:
        raise Unsatisfiable
    end = int(last) if last else total - 1
    if end < start:
        return None
    return ByteRange(start, min(end, total - 1))


def _none() -> ByteRange:
    raise Unsatisfiable
