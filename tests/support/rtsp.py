"""RTSP camera test peer: H.264 test clips and a gst-rtsp-server subprocess.

Fixtures (registered as a pytest plugin by ``tests/conftest.py``):

- ``rtsp_clip`` (session): a 90 s, 640x360, 15 fps, GOP 1 s H.264 clip in Matroska.
- ``rtsp_server`` (function): an :class:`RtspServer` serving ``/cam`` from ``rtsp_clip``;
  ``rtsp_server.url("/cam")`` is the camera URL.

The server is ``tests/support/rtsp_server.py`` run with Debian's ``/usr/bin/python3``
(gst-rtsp-server through python3-gi). When that interpreter cannot import GstRtspServer the
fixtures skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
HOST = "127.0.0.1"
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-rtsp"
)
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

# --------------------------------------------------------------------------------------------
# Test clips
# --------------------------------------------------------------------------------------------

_clip_lock = threading.Lock()
_clip_dir: Path | None = None
_clip_cache: dict[tuple[int, int, int, int, float], Path] = {}


def _session_clip_dir() -> Path:
    global _clip_dir
    if _clip_dir is None:
        _clip_dir = Path(tempfile.mkdtemp(prefix="cctv-rtsp-clips-"))
    return _clip_dir


class _Pattern:
    """Synthetic yuv420p frames: a scrolling diagonal gradient, a sweeping bar, and a block
    that moves once a second (so every second of footage differs)."""

    def __init__(self, fps: int, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("yuv420p needs an even width and height")
        self.fps, self.width, self.height = fps, width, height
        span = width + 4 * 256
        x = np.arange(span, dtype=np.int32)
        y = np.arange(height, dtype=np.int32)[:, None]
        self._luma = ((x + y) % 256).astype(np.uint8)
        cw, ch = width // 2, height // 2
        cx = np.arange(cw, dtype=np.int32)
        cy = np.arange(ch, dtype=np.int32)[:, None]
        self._u = (96 + (cx * 64 // max(1, cw)) + 0 * cy).astype(np.uint8)
        self._v = (96 + (cy * 64 // max(1, ch)) + 0 * cx).astype(np.uint8)

    def frame(self, index: int) -> av.VideoFrame:
        w, h = self.width, self.height
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        shift = (index * 4) % 1024
        buf[:h] = self._luma[:, shift : shift + w]
        bar = (index * 5) % h
        buf[bar : bar + 12] = 235
        second = index // self.fps
        bx = (second * 37) % max(1, w - 48)
        buf[8 : min(h, 56), bx : bx + 48] = (second * 53) % 200 + 16
        chroma = buf[h:].reshape(2, h // 2, w // 2)
        chroma[0] = self._u
        chroma[1] = self._v
        return av.VideoFrame.from_ndarray(buf, format="yuv420p")


def make_h264_mkv(
    path: Path,
    *,
    seconds: int,
    fps: int = 15,
    width: int = 640,
    height: int = 360,
    gop_seconds: float = 1.0,
) -> Path:
    """Encode a synthetic H.264 clip (no B-frames, fixed GOP) into Matroska at ``path``.

    Timestamps start at 0 and advance by one frame (``1/fps`` s); every ``gop_seconds`` there
    is a keyframe and only then.
    """
    gop = max(1, round(gop_seconds * fps))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        stream.options = {
            "preset": "ultrafast",
            "x264-params": f"bf=0:keyint={gop}:min-keyint={gop}:scenecut=0",
            "bf": "0",
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
        }
        pattern = _Pattern(fps, width, height)
        for i in range(seconds * fps):
            frame = pattern.frame(i)
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def cached_h264_mkv(
    *,
    seconds: int,
    fps: int = 15,
    width: int = 640,
    height: int = 360,
    gop_seconds: float = 1.0,
) -> Path:
    """:func:`make_h264_mkv` cached per parameter set in a per-session temp dir."""
    key = (seconds, fps, width, height, gop_seconds)
    with _clip_lock:
        cached = _clip_cache.get(key)
        if cached is not None and cached.exists():
            return cached
        name = f"clip-{seconds}s-{width}x{height}-{fps}fps-gop{gop_seconds:g}.mkv"
        path = make_h264_mkv(
            _session_clip_dir() / name,
            seconds=seconds,
            fps=fps,
            width=width,
            height=height,
            gop_seconds=gop_seconds,
        )
        _clip_cache[key] = path
        return path
