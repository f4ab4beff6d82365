"""Segment thumbnails: decode one keyframe and encode it as a small JPEG.

Decoding is allowed here because a thumbnail is a derived object; the footage itself is only
ever packet-copied.

Everything goes through FFmpeg (PyAV's decoder, swscale, its MJPEG encoder): an ingest process
never imports OpenCV or NumPy, whose import and idle BLAS threads cost more CPU than all
thumbnails of a camera-hour spend in JPEG encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import av.video.stream
from av.video.reformatter import ColorRange

from vault.errors import IntegrityError

__all__ = ["thumbnail_jpeg"]


def _first_keyframe(packets: Sequence[av.Packet[Any]] | av.Packet[Any]) -> av.Packet[Any]:
    candidates = [packets] if isinstance(packets, av.Packet) else list(packets)
    for packet in candidates:
        if packet.is_keyframe and packet.size:
            return packet
    raise IntegrityError("no keyframe to make a thumbnail from")


def thumbnail_jpeg(
    packets: Sequence[av.Packet[Any]] | av.Packet[Any],
    template: av.video.stream.VideoStream,
    max_width: int = 320,
    quality: int = 75,
) -> bytes:
    """JPEG of the first keyframe in ``packets``, at most ``max_width`` wide, aspect kept.

    A fresh decoder is built from the template stream's parameters, so the source stream's
    own codec context is never touched. Raises IntegrityError if nothing decodes.
    """
    if max_width < 1:
        raise ValueError("max_width must be at least 1")
    if not 1 <= quality <= 100:
        raise ValueError("quality must be between 1 and 100")
    keyframe = _first_keyframe(packets)
    source = template.codec_context
    try:
        decoder = av.CodecContext.create(source.name, "r")
    except (av.FFmpegError, ValueError) as exc:
        raise IntegrityError(f"no decoder for {source.name} ({type(exc).__name__})") from None
    if not isinstance(decoder, av.VideoCodecContext):
        raise IntegrityError(f"codec {source.name} is not a video codec")
    # Length-prefixed H.264/H.265 (MP4, Matroska) cannot be decoded without the avcC/hvcC
    # parameter sets, which live in the stream's extradata, not in the packets.
    if source.extradata:
        decoder.extradata = source.extradata
    # Deblocking is invisible at thumbnail size and about a tenth of the decode time.
    decoder.options = {"skip_loop_filter": "all"}
    try:
        # The decoder may hold the frame back (reorder delay); flushing with None releases it.
        frames = decoder.decode(keyframe) + decoder.decode(None)
    except (av.FFmpegError, ValueError) as exc:
        raise IntegrityError(f"keyframe does not decode ({type(exc).__name__})") from None
    if not frames:
        raise IntegrityError("keyframe decoded to no picture")
    frame = frames[0]
    width, height = frame.width, frame.height
    if width > max_width:
        width, height = max_width, max(2, round(height * max_width / width))
    # Scale and convert in one swscale pass (area filter: the least aliasing when shrinking)
    # straight to what a baseline JPEG stores: full-range 4:2:0.
    picture = frame.reformat(
        width=width,
        height=height,
        format="yuv420p",
        interpolation="AREA",
        dst_color_range=ColorRange.JPEG,
    )
    encoder = av.CodecContext.create("mjpeg", "w")
    if not isinstance(encoder, av.VideoCodecContext):
        raise IntegrityError("no MJPEG encoder")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.color_range = ColorRange.JPEG
    encoder.time_base = Fraction(1, 1)
    # A fixed quantiser scale: qmin = qmax pins it for the one frame.
    encoder.qmin = encoder.qmax = _qscale(quality)
    try:
        packets = encoder.encode(picture) + encoder.encode(None)
    except (av.FFmpegError, ValueError) as exc:
        raise IntegrityError(f"JPEG encoding failed ({type(exc).__name__})") from None
    if not packets:
        raise IntegrityError("JPEG encoding produced nothing")
    return bytes(packets[0])


def _qscale(quality: int) -> int:
    """MJPEG quantiser scale (1 best .. 31) for a libjpeg-style ``quality`` (1 .. 100).

    libjpeg scales its base tables by 5000/q % below 50 and by (200 - 2q) % above; FFmpeg's
    scale s multiplies the same tables by about s/10 (measured: s = 5 gives the size and PSNR
    of libjpeg's quality 75 on a 1080p thumbnail).
    """
    percent = 5000 / quality if quality < 50 else 200 - 2 * quality
    return max(1, min(31, round(percent / 10)))
