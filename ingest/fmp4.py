"""Fragmented MP4 output: packet-copy writer, crash truncation, summaries and NAL splitting.

Segments are fragmented MP4 with one ``moof``+``mdat`` pair per keyframe, written to the spool
and made durable fragment by fragment, so a crash leaves a prefix that recovery can cut back to
its last complete fragment (DESIGN §5). Packets are copied, never decoded or re-encoded.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import av.container
import av.video.stream

from vault.errors import IntegrityError

__all__ = [
    "FragmentWriter",
    "MediaSummary",
    "fsync_directory",
    "h264_nal_units",
    "summarize",
    "truncate_to_complete_fragments",
]

log = logging.getLogger(__name__)

MP4_OPTIONS = {
    # empty_moov: the init segment carries no samples, so the file is valid from the first
    # fragment on; default_base_moof: fragments are self-contained (offsets relative to moof).
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    # Hand every muxed packet to the kernel instead of letting libavformat hold up to a
    # buffer's worth: what we fsync must be everything the muxer has produced.
    "flush_packets": "1",
}


def fsync_directory(directory: Path) -> None:
    """Make a file's creation, rename or truncation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FragmentWriter:
    """Writes one segment file as fragmented MP4 by copying packets from a source stream.

    ``write`` takes packets whose timestamps the segmenter has already rebased to the start of
    the file, in the *template* stream's time base. Each keyframe opens a new fragment; at that
    moment the previous fragment is complete in the file, so it is fsynced.
    """

    def __init__(self, path: Path, template: av.video.stream.VideoStream) -> None:
        self.path = path
        self._time_base: Fraction = template.time_base or Fraction(1, 90_000)
        # FFmpeg writes the file itself, through its file protocol: no Python call, bytes
        # object and buffered-writer copy per chunk the muxer emits, and the GIL stays released
        # while mux() writes a fragment, so other cameras' threads and the committer run on.
        # We keep our own descriptor on the same file only to fsync it: fsync makes the inode's
        # data durable whichever descriptor wrote it. Creating the file here (FFmpeg opens it
        # at the first packet) gives us that descriptor, and the plaintext footage mode 0600.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            # "file:" keeps a relative path with a colon from being taken for a protocol.
            self._container = av.open(
                f"file:{os.fspath(path)}", "w", format="mp4", options=dict(MP4_OPTIONS)
            )
            self._stream = self._container.add_stream_from_template(template)
        except BaseException:
            os.close(self._fd)
            raise
        self._closed = False
        self._packets = 0

    @property
    def bytes_written(self) -> int:
        """Bytes handed to the file so far (durable only up to the last completed fragment)."""
        if self._closed:
            return os.stat(self.path).st_size
        return os.fstat(self._fd).st_size

    @property
    def packets_written(self) -> int:
        return self._packets

    def write(self, packet: av.Packet[Any], pts: int, dts: int) -> None:
        """Mux ``packet`` with the given rebased timestamps (template time base).

        The packet is taken over: PyAV's ``mux`` rescales its timestamps in place to the output
        time base and re-targets its stream, so callers must read what they need first.
        """
        if self._closed:
            raise ValueError(f"{self.path.name}: writer is closed")
        packet.stream = self._stream
        # Setting time_base explicitly matters: mux() rescales from the packet's time base to
        # the muxer's (the mp4 muxer picks its own timescale at header time); a demuxed packet
        # already carries the input time base but one built by hand carries none.
        packet.time_base = self._time_base
        packet.pts = pts
        packet.dts = dts
        keyframe = packet.is_keyframe
        self._container.mux(packet)
        self._packets += 1
        if keyframe:
            # frag_keyframe: muxing this keyframe closed the previous fragment, and with
            # flush_packets its moof+mdat is in the kernel; make it durable before accepting
            # more packets.
            os.fsync(self._fd)

    def close(self) -> int:
        """Finish the muxer, make the file and its directory entry durable; return its size."""
        if self._closed:
            return os.stat(self.path).st_size
        self._closed = True
        try:
            self._container.close()  # the trailer, then FFmpeg closes its descriptor
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
        fsync_directory(self.path.parent)
        size = os.stat(self.path).st_size
        log.debug("fmp4 closed path=%s packets=%d bytes=%d", self.path.name, self._packets, size)
        return size


# ISO-BMFF top-level box walking -------------------------------------------------------------

_INIT_BOXES = {b"ftyp", b"moov"}
# Boxes that may sit between fragments without breaking the moof+mdat pairing.
_NEUTRAL_BOXES = {b"styp", b"sidx", b"mfra", b"free", b"skip", b"prft", b"emsg", b"uuid"}


def _walk_boxes(fh: BinaryIO, file_size: int) -> list[tuple[bytes, int, int]]:
    """Complete top-level boxes as (type, start, end), stopping at the first incomplete one."""
    boxes: list[tuple[bytes, int, int]] = []
    offset = 0
    while offset + 8 <= file_size:
        fh.seek(offset)
        header = fh.read(8)
        size, box_type = struct.unpack(">I4s", header)
        header_len = 8
        if size == 1:
            if offset + 16 > file_size:
                break
            (size,) = struct.unpack(">Q", fh.read(8))
            header_len = 16
        elif size == 0:
            # "Extends to the end of the file": complete by definition of the format.
            size = file_size - offset
        if size < header_len:
            break  # corrupt header; nothing after it can be trusted
        end = offset + size
        if end > file_size:
            break
        boxes.append((box_type, offset, end))
        offset = end
    return boxes


def _complete_prefix(boxes: list[tuple[bytes, int, int]]) -> int:
    """Length of the longest prefix made of an init segment and whole moof+mdat fragments."""
    seen_ftyp = seen_moov = False
    pending_moof = False
    keep = 0
    for box_type, _start, end in boxes:
        if box_type == b"ftyp":
            if seen_ftyp:
                break
            seen_ftyp = True
        elif box_type == b"moov":
            if not seen_ftyp or seen_moov:
                break
            seen_moov = True
        elif not (seen_ftyp and seen_moov):
            if box_type not in _NEUTRAL_BOXES:
                break
        elif box_type == b"moof":
            pending_moof = True
        elif box_type == b"mdat":
            if pending_moof:
                keep = end
            pending_moof = False
        elif box_type not in _NEUTRAL_BOXES:
            break  # unknown top-level box: do not vouch for anything after it
    return keep


def truncate_to_complete_fragments(path: Path) -> int:
    """Cut ``path`` right after its last complete ``moof``+``mdat`` pair; return the new size.

    Returns 0 (and empties the file) when not even the init segment (``ftyp``+``moov``) and one
    complete fragment are present. Trailing boxes after the last fragment (``mfra``, a partial
    fragment) are dropped. Pure box walking: the file is not parsed by a demuxer.
    """
    with open(path, "r+b") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        keep = _complete_prefix(_walk_boxes(fh, file_size))
        if keep != file_size:
            fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    if keep != file_size:
        fsync_directory(path.parent)
        log.info("fmp4 truncated path=%s from=%d to=%d", path.name, file_size, keep)
    return keep


# Summaries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaSummary:
    codec: str
    width: int
    height: int
    frames: int
    media_duration: float
    first_is_keyframe: bool


def summarize(path: Path) -> MediaSummary:
    """Demux (never decode) the first video stream of ``path`` and describe it.

    Raises IntegrityError if the file cannot be opened or demuxed to its end.
    """
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise IntegrityError(f"{path.name}: not readable media ({_describe(exc)})") from None
    with container:
        if not container.streams.video:
            raise IntegrityError(f"{path.name}: no video stream")
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90_000)
        frames = 0
        first_is_keyframe = False
        first_ts: int | None = None
        last_ts: int | None = None
        last_duration = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                ts = packet.dts if packet.dts is not None else packet.pts
                if frames == 0:
                    first_is_keyframe = packet.is_keyframe
                    first_ts = ts
                frames += 1
                if ts is not None:
                    last_ts = ts
                    last_duration = packet.duration or 0
        except (av.FFmpegError, OSError) as exc:
            raise IntegrityError(f"{path.name}: demux failed ({_describe(exc)})") from None
        duration = 0.0
        if first_ts is not None and last_ts is not None:
            duration = float((last_ts - first_ts + last_duration) * time_base)
        return MediaSummary(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frames=frames,
            media_duration=duration,
            first_is_keyframe=first_is_keyframe,
        )


def _describe(exc: BaseException) -> str:
    # FFmpeg errors repeat the file name in str(); keep only the error text.
    return str(getattr(exc, "strerror", None) or type(exc).__name__)


# H.264/H.265 NAL units ----------------------------------------------------------------------


def _split_length_prefixed(data: bytes) -> list[bytes] | None:
    """Split 4-byte length-prefixed (AVCC/HVCC) data, or None if it does not tile exactly."""
    units: list[bytes] = []
    offset = 0
    total = len(data)
    while offset < total:
        if offset + 4 > total:
            return None
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if length == 0 or offset + length > total:
            return None
        unit = data[offset : offset + length]
        if unit[0] & 0x80:
            return None  # forbidden_zero_bit set: these are not NAL units
        units.append(unit)
        offset += length
    return units


def _split_annex_b(data: bytes) -> list[bytes]:
    units: list[bytes] = []
    start = -1
    i = 0
    total = len(data)
    while True:
        code = data.find(b"\x00\x00\x01", i)
        if code < 0:
            break
        if start >= 0:
            units.append(data[start:code])
        start = code + 3
        i = start
    if start >= 0:
        units.append(data[start:total])
    # A 4-byte start code and trailing_zero_8bits leave zero bytes at the end of the previous
    # unit; a NAL unit never ends in a zero byte (rbsp_trailing_bits), so they can be stripped.
    return [unit.rstrip(b"\x00") for unit in units if unit.rstrip(b"\x00")]


def h264_nal_units(data: bytes) -> list[bytes]:
    """NAL unit payloads of one H.264/H.265 access unit, without start codes or length prefixes.

    Detects the framing: Annex B (``00 00 01`` / ``00 00 00 01`` start codes, as RTSP delivers)
    or 4-byte length-prefixed (as MP4 and Matroska store). Raises ValueError if neither fits.
    """
    data = bytes(data)
    if not data:
        return []
    length_prefixed = _split_length_prefixed(data)
    if length_prefixed is not None:
        return length_prefixed
    if data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return _split_annex_b(data)
    raise ValueError("data is neither Annex B nor 4-byte length-prefixed NAL units")
