"""Segment thumbnails: decode one keyframe and encode it as a small JPEG.

Decoding is allowed here because a thumbnail is a derived object; the footage itself is only
ever packet-copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import av
import av.video.stream
import cv2
import numpy as np
import numpy.typing as npt

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
        # Scale and convert in one swscale pass (area filter: the least aliasing when
        # shrinking); converting the full picture to BGR first costs as much as the decode.
        new_height = max(2, round(height * max_width / width))
        frame = frame.reformat(
            width=max_width, height=new_height, format="bgr24", interpolation="AREA"
        )
    image: npt.NDArray[Any] = frame.to_ndarray(format="bgr24")
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise IntegrityError("JPEG encoding failed")
    return bytes(np.asarray(encoded, dtype=np.uint8).tobytes())
