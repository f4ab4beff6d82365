"""Synthetic cameras: the rendered clip, the looping replay and its pacing, and thumbnails."""

from __future__ import annotations

from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from ingest.fmp4 import summarize
from ingest.simulate import SyntheticSource, render_clip
from ingest.thumbnail import thumbnail_jpeg
from vault.errors import IntegrityError

FPS = 10
SECONDS = 4
GOP_SECONDS = 2.0
FRAMES = FPS * SECONDS


def _render(path: Path, camera_name: str = "loading-dock") -> Path:
    return render_clip(
        path,
        camera_name=camera_name,
        width=320,
        height=180,
        fps=FPS,
        seconds=SECONDS,
        gop_seconds=GOP_SECONDS,
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory.mktemp("clips") / "dock.mkv")


def test_clip_is_h264_with_the_requested_keyframe_interval(clip: Path) -> None:
    summary = summarize(clip)
    assert (summary.codec, summary.width, summary.height) == ("h264", 320, 180)
    assert summary.frames == FRAMES
    assert summary.media_duration == pytest.approx(SECONDS)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
        assert keyframes == list(range(0, FRAMES, int(FPS * GOP_SECONDS)))
        # No B-frames: decode order is presentation order.
        assert all(p.pts == p.dts for p in packets)


def test_frames_show_motion(clip: Path) -> None:
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in islice(container.decode(video=0), 12)]
    assert float(np.abs(frames[0].astype(int) - frames[11].astype(int)).mean()) > 0.5


def test_render_is_cached_by_parameters(tmp_path: Path) -> None:
    path = _render(tmp_path / "cached.mkv")
    first = path.stat().st_mtime_ns, path.read_bytes()
    assert path.with_suffix(".json").exists()
    _render(path)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == first
    _render(path, camera_name="another camera")
    assert path.read_bytes() != first[1]
    assert not list(tmp_path.glob(".*.tmp"))


def test_replay_loops_with_increasing_timestamps(clip: Path) -> None:
    with SyntheticSource(clip, realtime=False) as source:
        assert source.stream.codec_context.name == "h264"
        packets = list(islice(source.packets(), FRAMES * 2 + FRAMES // 2))
        dts = [p.dts for p in packets if p.dts is not None]
        assert len(dts) == len(packets)
        assert all(b > a for a, b in zip(dts, dts[1:], strict=False))
        assert all(p.pts == p.dts for p in packets)
        # Every loop starts on a keyframe and is the same clip, shifted by its duration.
        assert packets[FRAMES].is_keyframe and packets[2 * FRAMES].is_keyframe
        assert bytes(packets[FRAMES + 3]) == bytes(packets[3])
        assert source.loop_duration == pytest.approx(SECONDS)
        time_base = source.stream.time_base
        assert time_base is not None
        shift = (packets[FRAMES].dts or 0) - (packets[0].dts or 0)
        assert float(shift * time_base) == pytest.approx(SECONDS)


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_realtime_pacing_sleeps_to_keep_media_time(clip: Path) -> None:
    clock = FakeClock()
    with SyntheticSource(clip, realtime=True, clock=clock, sleep=clock.sleep) as source:
        time_base: Fraction = source.stream.time_base or Fraction(1, 1000)
        start = clock.now
        count = 0
        for packet in islice(source.packets(), FRAMES + 5):
            # Each packet is released when its media time is due, not before, not later.
            assert clock.now - start == pytest.approx(float((packet.dts or 0) * time_base))
            count += 1
    assert count == FRAMES + 5
    assert clock.sleeps and all(s > 0 for s in clock.sleeps)
    assert sum(clock.sleeps) == pytest.approx((FRAMES + 4) / FPS)


def test_a_late_consumer_is_not_slept(clip: Path) -> None:
    clock = FakeClock()
    with SyntheticSource(clip, realtime=True, clock=clock, sleep=clock.sleep) as source:
        packets = source.packets()
        next(packets)
        clock.now += 5.0  # the consumer stalled for longer than the next 4 s of media
        late = list(islice(packets, FRAMES - 1))
    assert len(late) == FRAMES - 1
    assert clock.sleeps == []


def test_thumbnail_from_packets(clip: Path) -> None:
    with SyntheticSource(clip, realtime=False) as source:
        packets = list(islice(source.packets(), 5))
        jpeg = thumbnail_jpeg(packets, source.stream, max_width=160)
        single = thumbnail_jpeg(packets[0], source.stream)
    assert jpeg[:2] == b"\xff\xd8"
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape[:2] == (90, 160)
    full = cv2.imdecode(np.frombuffer(single, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert full.shape[:2] == (180, 320)  # never upscaled past max_width=320


def test_thumbnail_needs_a_keyframe(clip: Path) -> None:
    with SyntheticSource(clip, realtime=False) as source:
        packets = list(islice(source.packets(), 5))
        with pytest.raises(IntegrityError):
            thumbnail_jpeg(packets[1:], source.stream)
