"""Benchmark inputs: CCTV-like H.264 clips at a realistic bitrate, and long inputs built from them.

``simulate.render_clip`` draws flat synthetic scenes that libx264 compresses to ~0.35 Mbit/s at
720p: far below a real camera, and the bytes per second are what ingest hashes, encrypts and
writes. These clips add sensor-like temporal noise to a textured static scene with moving
figures and a burned-in clock, and encode with a bitrate cap, so the encoder spends close to
the asked bitrate like a real camera does (CBR-ish, fixed GOP, no B-frames).

Long inputs (an hour) are not encoded frame by frame: a short clip is encoded once and repeated
with ``ffmpeg -f concat -c copy``, which offsets each copy by the clip's duration, so the result
has continuous timestamps and an unbroken keyframe cadence (the clip length is a whole number
of GOPs). Every file is cached next to a JSON sidecar of the parameters that made it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

FFMPEG = "/usr/bin/ffmpeg"
_FORMAT = 2  # bump when the drawing or encoder settings change


def _cached(path: Path, params: dict[str, Any]) -> bool:
    sidecar = path.with_name(path.name + ".json")
    if not (path.exists() and sidecar.exists()):
        return False
    try:
        return bool(json.loads(sidecar.read_text(encoding="utf-8")) == params)
    except (OSError, ValueError):
        return False


def _mark(path: Path, params: dict[str, Any]) -> None:
    path.with_name(path.name + ".json").write_text(json.dumps(params, sort_keys=True))


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A static 'corridor': gradient, floor lines, doors, texture (what a camera sees)."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = 60 + 70 * y + 25 * np.sin(6 * x) * (1 - y)
    img = np.repeat(base[:, :, None], 3, axis=2)
    img[..., 0] *= 0.9
    img[..., 2] *= 1.05
    img = np.clip(img, 0, 255).astype(np.uint8)
    t = max(1, height // 360)
    for i in range(12):  # floor tiles in perspective
        yy = int(height * (0.55 + 0.45 * (i / 12) ** 1.6))
        cv2.line(img, (0, yy), (width - 1, yy), (40, 44, 48), t)
    for i in range(5):  # doors and signs
        x0 = int(width * (0.08 + 0.18 * i))
        cv2.rectangle(
            img,
            (x0, int(height * 0.2)),
            (x0 + width // 14, int(height * 0.55)),
            tuple(int(c) for c in rng.integers(50, 200, 3)),
            -1,
        )
        cv2.rectangle(
            img,
            (x0 + 6, int(height * 0.12)),
            (x0 + width // 16, int(height * 0.17)),
            (200, 200, 210),
            -1,
        )
    texture = rng.normal(0, 10, (height, width, 1)).astype(np.int16)
    return np.clip(img.astype(np.int16) + texture, 0, 255).astype(np.uint8)


def encode_clip(
    path: Path,
    *,
    width: int,
    height: int,
    fps: int,
    seconds: int,
    gop_seconds: float,
    bitrate: int,
    container: str = "mp4",
    preset: str = "veryfast",
    noise: float = 4.0,
) -> Path:
    """Encode a CCTV-like H.264 clip; reuse it if the cached one has the same parameters."""
    gop = max(1, round(fps * gop_seconds))
    if (fps * seconds) % gop:
        raise ValueError("the clip must hold a whole number of GOPs")
    params = {
        "format": _FORMAT,
        "width": width,
        "height": height,
        "fps": fps,
        "seconds": seconds,
        "gop": gop,
        "bitrate": bitrate,
        "container": container,
        "preset": preset,
        "noise": noise,
    }
    if _cached(path, params):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rng = np.random.default_rng(20260101)
    background = _background(width, height, rng)
    # Temporal noise: pre-drawn planes, cropped at a random offset per frame (cheap, never the
    # same two frames in a row, so the encoder cannot skip it, like sensor grain at night).
    pad = 64
    planes = [rng.normal(0, noise, (height + pad, width + pad)).astype(np.int16) for _ in range(6)]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fmt = {"mp4": "mp4", "mkv": "matroska"}[container]
    with av.open(str(tmp), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if container == "mp4":
            stream.time_base = Fraction(1, 90_000)  # like RTP's 90 kHz clock
        kbit = bitrate // 1000
        stream.options = {
            "preset": preset,
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "bf": "0",
            "b": f"{kbit}k",
            "maxrate": f"{kbit}k",
            "bufsize": f"{kbit}k",
        }
        figures = [(0.6 + 0.12 * i, 5.0 + 2.5 * i, 0.3 * i) for i in range(3)]
        for index in range(fps * seconds):
            img = background.copy()
            secs = index / fps
            for lane, period, phase in figures:
                progress = abs(((secs / period + phase) % 1.0) * 2.0 - 1.0)
                bw, bh = max(4, width // 24), max(8, height // 5)
                x = int(progress * (width - bw - 1))
                y0 = int(lane * height) - bh
                cv2.rectangle(img, (x, y0), (x + bw, y0 + bh), (90, 120, 170), -1)
                cv2.circle(img, (x + bw // 2, y0 - bw // 2), bw // 2, (150, 170, 200), -1)
            scale = max(0.5, height / 720.0)
            cv2.putText(
                img,
                f"ENTRANCE-01  2026-01-01 00:{index // fps // 60 % 60:02d}:"
                f"{index // fps % 60:02d}.{index % fps:02d}",
                (16, int(40 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (240, 240, 240),
                2,
                cv2.LINE_AA,
            )
            yuv = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
            plane = planes[index % len(planes)]
            oy, ox = int(rng.integers(0, pad)), int(rng.integers(0, pad))
            luma = yuv[:height].astype(np.int16) + plane[oy : oy + height, ox : ox + width]
            yuv[:height] = np.clip(luma, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    _mark(path, params)
    print(
        f"  encoded {path.name}: {width}x{height}@{fps} {seconds}s "
        f"{path.stat().st_size * 8 / seconds / 1e6:.2f} Mbit/s in "
        f"{time.monotonic() - started:.0f}s",
        flush=True,
    )
    return path


def repeat_clip(clip: Path, path: Path, copies: int) -> Path:
    """``clip`` repeated ``copies`` times with continuous timestamps (``-f concat -c copy``)."""
    params = {
        "format": _FORMAT,
        "clip": clip.name,
        "clip_bytes": clip.stat().st_size,
        "copies": copies,
    }
    if _cached(path, params):
        return path
    started = time.monotonic()
    listing = path.with_name(path.name + ".list")
    listing.write_text("".join(f"file '{clip.resolve()}'\n" for _ in range(copies)))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            "-map",
            "0:v:0",
            str(tmp),
        ],
        check=True,
    )
    os.replace(tmp, path)
    listing.unlink()
    _mark(path, params)
    print(
        f"  built {path.name}: {copies} x {clip.name} in {time.monotonic() - started:.0f}s",
        flush=True,
    )
    return path


def describe(path: Path) -> dict[str, Any]:
    """Packets, keyframes, duration and bitrate of the first video stream (demux only)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        packets = keyframes = size = 0
        first = last = None
        last_dur = 0
        jumps = 0
        prev = None
        for pkt in container.demux(stream):
            if not pkt.size:
                continue
            ts = pkt.dts if pkt.dts is not None else pkt.pts
            packets += 1
            keyframes += bool(pkt.is_keyframe)
            size += pkt.size
            if first is None:
                first = ts
            if prev is not None and ts is not None and not 0 < ts - prev < 2 * (last_dur or 1e9):
                jumps += 1
            prev = last = ts
            last_dur = pkt.duration or 0
        ctx = stream.codec_context
        duration = float((last - first + last_dur) * tb) if first is not None else 0.0
        return {
            "codec": ctx.name,
            "width": ctx.width,
            "height": ctx.height,
            "packets": packets,
            "keyframes": keyframes,
            "payload_bytes": size,
            "file_bytes": path.stat().st_size,
            "duration_s": round(duration, 3),
            "mbit_s": round(size * 8 / duration / 1e6, 3) if duration else 0.0,
            "timestamp_jumps": jumps,
        }
