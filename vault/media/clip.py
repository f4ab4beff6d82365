"""Playback clips: one camera's native segments remuxed into one streamed fragmented MP4.

A clip covers a half-open wall-time window ``[start, end)``. It is built by packet copy only
(I1): segments are demuxed and their packets muxed again, never decoded, so every sample in
the clip is byte-identical to the native segment's. See ``docs/design/playback.md``.

Which packets (decoding timestamps, because segments are cut and anchored on DTS):

* the clip starts at the last keyframe whose wall time is at or before ``start`` — in the
  segment that contains ``start``, which begins on a keyframe, so one always exists there; if
  ``start`` falls in a gap or before the first footage, the clip starts at the first footage
  after it;
* it takes every following packet whose wall time is before ``end``; with a constant frame
  interval the last one's wall time plus its duration reaches ``end`` (or the end of the
  footage, whichever is first).

Timestamps: ``wall(packet) = segment.start + dts * time_base`` and the clip's media time is
the wall time elapsed since its first frame. Inside a run this continues seamlessly from one
segment to the next (segment ``k+1`` starts where ``k`` ends); across a gap the media time
jumps by the gap's wall duration, so a seek position in the player is always the wall offset
from the clip's first frame.

The pure core takes :class:`ClipSource` values (wall span plus a callable returning the
segment's plaintext MP4), so it is testable without a store; ``vault.media.playback`` binds it
to the vault.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import av
import av.container
import av.video.stream

from vault.errors import IntegrityError, InvalidInput, NotFound
from vault.timerange import TimeRange, as_utc

__all__ = ["MP4_FRAGMENT_OPTIONS", "Clip", "ClipSource", "open_clip"]

log = logging.getLogger(__name__)

MP4_FRAGMENT_OPTIONS = {
    # One moof+mdat per keyframe after a sample-less moov: the first bytes (ftyp+moov) can be
    # sent before any fragment exists, the output never needs a seek back (we stream it), and
    # every fragment is self-contained (default_base_moof). Chrome's <video> plays this.
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    # Hand every write to our sink at once instead of filling a 32 KiB I/O buffer first:
    # otherwise the init segment would wait for the first fragment (worse time to first byte).
    "flush_packets": "1",
}

_DEMUX_OPTIONS = {
    # Opening an input runs FFmpeg's stream probing, which decodes frames to learn what the
    # container already says (size, profile and avcC are in the moov). Decoding nothing keeps
    # the path free of decoding (I1) and makes opening a 1080p segment take under a
    # millisecond instead of ~30-50 ms (P6). The output muxer needs none of what it would learn.
    "skip_frame": "all",
    "probesize": "32",
    "analyzeduration": "0",
}

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ClipSource:
    """One native segment as the clip needs it.

    ``start``/``end`` are the segment row's wall span (aware UTC); ``read`` returns its
    plaintext fragmented MP4 and is called only when the clip reaches the segment, so at most
    one segment's plaintext is held at a time. ``codec``/``width``/``height`` come from the
    catalog and let a change of stream format be refused before any byte is produced.
    """

    segment_id: str
    start: datetime
    end: datetime
    codec: str
    width: int
    height: int
    read: Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a clip's footage is, known before streaming (wall time, aware UTC)."""

    start: datetime
    end: datetime
    gaps: tuple[TimeRange, ...]


def _seconds(delta: timedelta) -> Fraction:
    """A timedelta as an exact number of seconds (datetimes have microsecond resolution)."""
    return Fraction(delta // _MICROSECOND, 1_000_000)


def _ticks(seconds: Fraction, time_base: Fraction) -> int:
    return round(seconds / time_base)


class _Sink:
    """A write-only file object for the muxer: collects bytes until the clip hands them out.

    It has no ``seek``, so libavformat treats the output as a stream (as it is: HTTP) and the
    fragmented muxer never tries to go back and patch earlier boxes.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        return chunk


class _SegmentReader:
    """Demuxes one segment's plaintext MP4 (never decodes it)."""

    def __init__(self, source: ClipSource) -> None:
        self.source = source
        plaintext = source.read()
        try:
            # BytesIO over bytes shares the buffer: no copy of the segment is made here.
            self.container: av.container.InputContainer = av.open(
                io.BytesIO(plaintext), "r", format="mp4", options=dict(_DEMUX_OPTIONS)
            )
        except (av.FFmpegError, OSError) as exc:
            raise IntegrityError(
                f"segment {source.segment_id} is not readable MP4 ({type(exc).__name__})"
            ) from None
        if not self.container.streams.video:
            self.container.close()
            raise IntegrityError(f"segment {source.segment_id} has no video stream")
        self.stream: av.video.stream.VideoStream = self.container.streams.video[0]
        self._closed = False
        self.time_base: Fraction = self.stream.time_base or Fraction(1, 90_000)

    def packets(self) -> Iterator[av.Packet[Any]]:
        try:
            for packet in self.container.demux(self.stream):
                if packet.size and packet.dts is not None:
                    yield packet
        except (av.FFmpegError, OSError) as exc:
            raise IntegrityError(
                f"segment {self.source.segment_id} failed to demux ({type(exc).__name__})"
            ) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.container.close()


def _h264_codecs(extradata: bytes | None) -> str | None:
    """RFC 6381 ``avc1.PPCCLL`` from an avcC record (profile, constraints, level bytes)."""
    if not extradata or len(extradata) < 4 or extradata[0] != 1:
        return None
    return "avc1." + extradata[1:4].hex().upper()


@dataclass
class Clip:
    """A clip ready to stream: iterate it for the MP4's bytes, in order, exactly once.

    ``start`` is the wall time of the first frame (media time 0), ``end`` where the covered
    footage ends (at most the window's end), ``gaps`` the wall ranges inside ``[start, end)``
    with no footage (the player shows the last frame before each, the media time runs on).
    """

    start: datetime
    end: datetime
    gaps: tuple[TimeRange, ...]
    content_type: str
    segment_ids: tuple[str, ...]
    _chunks: Generator[bytes, None, None] = field(repr=False)
    _first: _SegmentReader = field(repr=False)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """Release the demuxer and muxer if the consumer stops early (client went away).

        Also for a clip never iterated: a generator that has not started does not run its
        ``finally`` on close, so the first segment, opened by :func:`open_clip`, closes here.
        """
        self._chunks.close()
        self._first.close()


def _select(sources: Iterable[ClipSource], window: TimeRange) -> list[ClipSource]:
    ordered = sorted(
        (s for s in sources if s.start < window.end and s.end > window.start and s.end > s.start),
        key=lambda s: s.start,
    )
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.start < before.end:
            # The catalog promises one wall timeline per camera (S5); a clip cannot honour
            # overlapping footage without reordering it, so refuse rather than guess.
            raise IntegrityError(
                f"segments {before.segment_id} and {after.segment_id} overlap in wall time"
            )
    for before, after in zip(ordered, ordered[1:], strict=False):
        if (after.codec, after.width, after.height) != (before.codec, before.width, before.height):
            # One MP4 track has one sample description: a clip cannot switch codec or size.
            raise InvalidInput(
                f"the camera's stream changes from {before.codec} {before.width}x{before.height} "
                f"to {after.codec} {after.width}x{after.height} at {after.start.isoformat()}; "
                "ask for the footage before and after that instant separately"
            )
    return ordered


def _span(chosen: Sequence[ClipSource], first_frame: datetime, window: TimeRange) -> _Span:
    end = min(window.end, chosen[-1].end)
    gaps = tuple(
        TimeRange(before.end, after.start)
        for before, after in zip(chosen, chosen[1:], strict=False)
        if before.end < after.start and before.end < end
    )
    return _Span(first_frame, end, gaps)


def open_clip(sources: Iterable[ClipSource], window: TimeRange) -> Clip:
    """Prepare the clip of ``window`` from one camera's segments (any order, any extent).

    Reads and demuxes the first segment up to the starting keyframe before returning, so the
    errors a caller can still answer cleanly come from here, before any byte is produced:

    * :class:`InvalidInput` — the window is empty, or the stream format changes inside it;
    * :class:`NotFound` — no footage overlaps the window;
    * :class:`IntegrityError` — segments overlap, or the first one is not readable MP4.

    Iterating the clip yields the MP4 in chunks: ``ftyp``+``moov`` first (as soon as the first
    packet is muxed), then one ``moof``+``mdat`` fragment per GOP. A later segment that fails
    to read raises from the iteration (what the caller has sent by then stays sent).
    """
    if window.end <= window.start:
        raise InvalidInput("the clip window is empty (end must be after start)")
    chosen = _select(sources, window)
    if not chosen:
        raise NotFound(
            f"no footage in [{window.start.isoformat()}, {window.end.isoformat()})"
        )
    first = _SegmentReader(chosen[0])
    try:
        head, rest = _first_gop(first, window.start)
    except BaseException:
        first.close()
        raise
    if not head:
        first.close()
        raise IntegrityError(f"segment {chosen[0].segment_id} holds no keyframe")
    origin_dts = head[0].dts
    assert origin_dts is not None
    first_frame = chosen[0].start + timedelta(
        microseconds=round(origin_dts * first.time_base * 1_000_000)
    )
    if first_frame >= window.end:
        # Only a segment that does not begin on a keyframe can get here: its first decodable
        # frame lies beyond the window.
        first.close()
        raise NotFound(
            f"no decodable footage in [{window.start.isoformat()}, {window.end.isoformat()})"
        )
    span = _span(chosen, first_frame, window)
    codecs = _h264_codecs(first.stream.codec_context.extradata)
    content_type = f'video/mp4; codecs="{codecs}"' if codecs else "video/mp4"
    chunks = _remux(chosen, window, first, head, rest, origin_dts)
    return Clip(
        start=span.start,
        end=span.end,
        gaps=span.gaps,
        content_type=content_type,
        segment_ids=tuple(s.segment_id for s in chosen),
        _chunks=chunks,
        _first=first,
    )


def _first_gop(
    reader: _SegmentReader, start: datetime
) -> tuple[list[av.Packet[Any]], Iterator[av.Packet[Any]]]:
    """Packets from the last keyframe at or before ``start`` up to ``start`` (inclusive), and
    the demux iterator positioned right after them."""
    start_ticks = _seconds(as_utc(start) - reader.source.start) / reader.time_base
    head: list[av.Packet[Any]] = []
    packets = reader.packets()
    for packet in packets:
        dts = packet.dts
        assert dts is not None
        if packet.is_keyframe and dts <= start_ticks:
            head = [packet]  # a later keyframe still at or before start: begin there instead
        elif dts <= start_ticks:
            if head:
                head.append(packet)
        elif not head:
            # start lies before this segment's first keyframe (in a gap, or before any
            # footage): the clip begins at the first keyframe after it.
            if packet.is_keyframe:
                return [packet], packets
        else:
            return head, itertools.chain((packet,), packets)
    return head, iter(())


def _remux(
    chosen: list[ClipSource],
    window: TimeRange,
    first: _SegmentReader,
    head: list[av.Packet[Any]],
    rest: Iterator[av.Packet[Any]],
    origin_dts: int,
) -> Generator[bytes, None, None]:
    sink = _Sink()
    output = av.open(sink, "w", format="mp4", options=dict(MP4_FRAGMENT_OPTIONS))
    clip_stream = output.add_stream_from_template(first.stream)
    clip_tb = first.time_base
    template_extradata = first.stream.codec_context.extradata
    last_dts: int | None = None
    packets = clamped = 0
    reader: _SegmentReader | None = first
    try:
        for index, source in enumerate(chosen):
            if reader is None:
                reader = _SegmentReader(source)
                if reader.stream.codec_context.extradata != template_extradata:
                    # Same codec and size (checked from the catalog) but other parameter sets:
                    # H.264 cameras repeat SPS/PPS in-band before keyframes, which decoders
                    # follow, so the clip goes on; noted in case a player stumbles.
                    log.warning(
                        "clip: segment %s has other codec parameters than the clip's first",
                        source.segment_id,
                    )
                stream_packets: Iterable[av.Packet[Any]] = _skip_to_keyframe(reader.packets())
            else:
                stream_packets = itertools.chain(head, rest)
            tb = reader.time_base
            # Clip media time = wall time since the first frame, in the clip's time base.
            offset = _ticks(_seconds(source.start - chosen[0].start), clip_tb) - origin_dts
            end_ticks = _seconds(window.end - source.start) / tb
            for packet in stream_packets:
                dts, pts = packet.dts, packet.pts
                assert dts is not None
                if dts >= end_ticks:
                    break
                if tb != clip_tb:
                    dts = _ticks(dts * tb, clip_tb)
                    pts = None if pts is None else _ticks(pts * tb, clip_tb)
                    if packet.duration:
                        packet.duration = _ticks(packet.duration * tb, clip_tb)
                out_dts = dts + offset
                out_pts = out_dts if pts is None else pts + offset
                if last_dts is not None and out_dts <= last_dts:
                    # Only rounding of microsecond segment starts can get here (contiguous
                    # segments share their boundary exactly): keep DTS strictly increasing.
                    clamped += 1
                    out_pts += last_dts + 1 - out_dts
                    out_dts = last_dts + 1
                packet.stream = clip_stream
                packet.time_base = clip_tb
                packet.dts = out_dts
                packet.pts = out_pts
                output.mux(packet)
                last_dts = out_dts
                packets += 1
                chunk = sink.take()
                if chunk:
                    yield chunk
            head = []
            reader.close()
            reader = None
            log.debug("clip: segment %d/%d copied", index + 1, len(chosen))
        output.close()
        chunk = sink.take()
        if chunk:
            yield chunk
        log.debug("clip remuxed segments=%d packets=%d clamped=%d", len(chosen), packets, clamped)
    finally:
        if reader is not None:
            reader.close()
        output.close()


def _skip_to_keyframe(packets: Iterator[av.Packet[Any]]) -> Iterator[av.Packet[Any]]:
    """Segments start on a keyframe; should one not, drop what cannot be decoded on its own."""
    started = False
    for packet in packets:
        if not started and not packet.is_keyframe:
            continue
        started = True
        yield packet
