"""Synthetic cameras for the demo and tests.

Frames are drawn with OpenCV (camera name, burned-in elapsed clock, moving figures), encoded
once with PyAV's libx264 into a Matroska clip, then replayed packet by packet in a loop, at real
time if asked. The recorder sees the same thing as from RTSP: a template stream and an iterator
of H.264 packets, which it copies without transcoding (DESIGN §5).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import av.video.stream
import cv2
import numpy as np
import numpy.typing as npt

from ingest.sources import video_stream

__all__ = ["SyntheticSource", "render_clip"]

log = logging.getLogger(__name__)

# Bump when the drawing or encoder settings change so cached clips are re-rendered.
_CLIP_FORMAT = 1

Image = npt.NDArray[np.uint8]


def _elapsed_clock(milliseconds: int) -> str:
    seconds, millis = divmod(milliseconds, 1000)
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    return f"{hours:02d}:{mins:02d}:{secs:02d}.{millis:03d}"


class _Scene:
    """Deterministic drawing of one camera's view; figures differ per camera name."""

    def __init__(self, camera_name: str, width: int, height: int, fps: int) -> None:
        self.camera_name = camera_name
        self.width = width
        self.height = height
        self.fps = fps
        seed = zlib.crc32(camera_name.encode("utf-8"))
        rng = np.random.default_rng(seed)
        # (lane y as a fraction of height, period in seconds, phase, BGR colour)
        self.figures = [
            (
                0.45 + 0.15 * i,
                float(rng.uniform(4.0, 9.0)),
                float(rng.uniform(0.0, 1.0)),
                tuple(int(c) for c in rng.integers(90, 230, size=3)),
            )
            for i in range(3)
        ]
        self.font_scale = max(0.35, height / 480.0)
        self.thickness = max(1, round(height / 360.0))

    def draw(self, index: int) -> Image:
        w, h = self.width, self.height
        image: Image = np.full((h, w, 3), (28, 24, 22), dtype=np.uint8)
        # Static "floor" lines so motion is visible against something.
        for i in range(1, 4):
            y = int(h * (0.35 + 0.2 * i))
            cv2.line(image, (0, y), (w - 1, y), (48, 44, 40), self.thickness)
        seconds = index / self.fps
        for lane, period, phase, colour in self.figures:
            # Triangle wave: walk across the view and back.
            progress = abs(((seconds / period + phase) % 1.0) * 2.0 - 1.0)
            body_w = max(4, w // 24)
            body_h = max(8, h // 6)
            x = int(progress * (w - body_w - 1))
            y = int(lane * h) - body_h
            bob = int(math.sin(seconds * 6.0 + phase * 6.0) * max(1, h // 120))
            cv2.rectangle(image, (x, y + bob), (x + body_w, y + body_h + bob), colour, -1)
            head = max(2, body_w // 2)
            cv2.ellipse(
                image, (x + body_w // 2, y + bob - head), (head, head), 0, 0, 360, colour, -1
            )
        text_colour = (235, 235, 235)
        line_h = int(30 * self.font_scale) + 4
        cv2.putText(
            image,
            self.camera_name,
            (8, line_h),
            cv2.FONT_HERSHEY_SIMPLEX,
            self.font_scale,
            text_colour,
            self.thickness,
            cv2.LINE_AA,
        )
        cv2.putText(
            image,
            _elapsed_clock(index * 1000 // self.fps),
            (8, h - 10),
            cv2.FONT_HERSHEY_SIMPLEX,
            self.font_scale,
            text_colour,
            self.thickness,
            cv2.LINE_AA,
        )
        return image


def _clip_parameters(
    camera_name: str, width: int, height: int, fps: int, seconds: int, gop_seconds: float
) -> dict[str, Any]:
    return {
        "format": _CLIP_FORMAT,
        "codec": "h264",
        "camera_name": camera_name,
        "width": width,
        "height": height,
        "fps": fps,
        "seconds": seconds,
        "gop_seconds": gop_seconds,
    }


def render_clip(
    path: Path,
    *,
    camera_name: str,
    width: int,
    height: int,
    fps: int,
    seconds: int,
    gop_seconds: float,
) -> Path:
    """Render and encode a synthetic camera clip (H.264 in Matroska) at ``path``; return it.

    Keyframes come exactly every ``fps * gop_seconds`` frames and there are no B-frames, like a
    camera's fixed GOP. A clip whose JSON sidecar records the same parameters is reused.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError("width and height must be positive and even (yuv420p)")
    if fps <= 0 or seconds <= 0 or gop_seconds <= 0:
        raise ValueError("fps, seconds and gop_seconds must be positive")
    gop = max(1, round(fps * gop_seconds))
    params = _clip_parameters(camera_name, width, height, fps, seconds, gop_seconds)
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        try:
            if json.loads(sidecar.read_text(encoding="utf-8")) == params:
                return path
        except (OSError, ValueError):
            pass  # unreadable sidecar: render again
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Temp name plus rename: a concurrent reader or a crash never sees a half-written clip.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scene = _Scene(camera_name, width, height, fps)
    try:
        with av.open(str(tmp), "w", format="matroska") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "g": str(gop),
                "keyint_min": str(gop),
                # No scene-cut keyframes and no B-frames: GOPs exactly as asked, dts == pts.
                "sc_threshold": "0",
                "bf": "0",
            }
            for index in range(fps * seconds):
                frame = av.VideoFrame.from_ndarray(scene.draw(index), format="bgr24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sidecar_tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    sidecar_tmp.write_text(json.dumps(params, sort_keys=True), encoding="utf-8")
    os.replace(sidecar_tmp, sidecar)
    log.info(
        "synthetic clip rendered camera=%s path=%s size=%dx%d fps=%d seconds=%d gop=%d "
        "elapsed_s=%.2f",
        camera_name,
        path.name,
        width,
        height,
        fps,
        seconds,
        gop,
        time.monotonic() - started,
    )
    return path


class SyntheticSource:
    """Replays a clip's packets forever with ever-increasing timestamps.

    Loop ``k`` adds ``k`` clip durations (in the stream time base) to every pts/dts. When
    ``realtime`` is true, each packet is released when its media time is due on ``clock``,
    measured from the first packet; a consumer that falls behind then receives the overdue
    packets at once, as it would from a camera's TCP buffer.
    """

    def __init__(
        self,
        clip: Path,
        *,
        realtime: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.clip = clip
        self.realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._container = av.open(str(clip))
        try:
            self._stream = video_stream(self._container)
            self._first_dts, self._span = self._measure()
        except BaseException:
            self._container.close()
            raise
        self._time_base: Fraction = self._stream.time_base or Fraction(1, 1000)

    def _measure(self) -> tuple[int, int]:
        """First dts and the clip's duration (time-base units), from one demux pass."""
        first: int | None = None
        last = 0
        last_duration = 0
        count = 0
        for packet in self._container.demux(self._stream):
            if not packet.size:
                continue
            ts = packet.dts if packet.dts is not None else packet.pts
            if ts is None:
                continue
            if first is None:
                first = ts
            last = ts
            last_duration = packet.duration or 0
            count += 1
        if first is None:
            raise ValueError(f"{self.clip.name}: no timestamped video packets")
        if last_duration <= 0:
            last_duration = (last - first) // (count - 1) if count > 1 else 1
        return first, last - first + last_duration

    @property
    def stream(self) -> av.video.stream.VideoStream:
        """The clip's video stream: the template for ``FragmentWriter``."""
        return self._stream

    @property
    def loop_duration(self) -> float:
        """Seconds of media per loop of the clip."""
        return float(self._span * self._time_base)

    def packets(self) -> Iterator[av.Packet[Any]]:
        """Packets with data, looping forever; one consumer at a time."""
        started: float | None = None
        loop = 0
        while True:
            self._container.seek(0, stream=self._stream)
            offset = loop * self._span
            for packet in self._container.demux(self._stream):
                if not packet.size:
                    continue
                if packet.pts is not None:
                    packet.pts += offset
                if packet.dts is not None:
                    packet.dts += offset
                if self.realtime:
                    now = self._clock()
                    if started is None:
                        started = now
                    ts = packet.dts if packet.dts is not None else packet.pts
                    media_s = float(((ts or 0) - self._first_dts) * self._time_base)
                    delay = started + media_s - now
                    if delay > 0:
                        self._sleep(delay)
                yield packet
            loop += 1

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> SyntheticSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
