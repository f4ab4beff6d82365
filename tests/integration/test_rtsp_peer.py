"""The RTSP camera test peer itself: what a recorder will see from it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from tests.support.rtsp import RtspServer, RtspServerFactory, make_h264_mkv

pytestmark = pytest.mark.rtsp

FPS = 15
FRAME_TICKS = 90000 // FPS  # RTP H.264 clock is 90 kHz
# Matroska keeps milliseconds: 67, 133, 200 ms... arrive as 6030, 11970, 18000 ticks.
FRAME_JITTER = 90
OPEN_TIMEOUT = 5.0
READ_TIMEOUT = 5.0
OPTIONS = {
    "rtsp_transport": "tcp",
    "analyzeduration": "500000",
    "probesize": "65536",
    "timeout": str(int(READ_TIMEOUT * 1_000_000)),  # socket I/O timeout, microseconds
}


def open_camera(url: str) -> av.container.InputContainer:
    return av.open(url, options=OPTIONS, timeout=(OPEN_TIMEOUT, READ_TIMEOUT))


def packets(container: av.container.InputContainer) -> Iterator[av.Packet]:
    """Video packets as received; drops the empty packet PyAV yields at the end."""
    for packet in container.demux(container.streams.video[0]):
        if packet.size:
            yield packet


def read_packets(url: str, count: int) -> list[av.Packet]:
    with open_camera(url) as container:
        out: list[av.Packet] = []
        for packet in packets(container):
            out.append(packet)
            if len(out) == count:
                break
    return out


def nal_units(packet: av.Packet) -> list[bytes]:
    """NAL units of an Annex B packet (what the RTSP demuxer produces)."""
    data = bytes(packet)
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    ends = [s - 3 for s in starts[1:]] + [len(data)]
    return [data[s:e].rstrip(b"\x00") for s, e in zip(starts, ends, strict=True)]


def avcc_nal_units(packet: av.Packet) -> list[bytes]:
    """NAL units of a length-prefixed packet (what the Matroska demuxer produces)."""
    data, pos, out = bytes(packet), 0, []
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def slices(nals: list[bytes]) -> list[bytes]:
    """The coded picture (VCL NAL units: non-IDR and IDR slices)."""
    return [n for n in nals if n and n[0] & 0x1F in (1, 5)]


def file_packets(path: Path, count: int) -> list[av.Packet]:
    with av.open(str(path)) as container:
        out = []
        for packet in packets(container):
            out.append(packet)
            if len(out) == count:
                break
    return out


def assert_frame_steps(pkts: list[av.Packet]) -> None:
    dts = [p.dts for p in pkts]
    assert all(d is not None for d in dts), dts
    steps = [b - a for a, b in zip(dts, dts[1:], strict=False)]
    assert all(abs(s - FRAME_TICKS) <= FRAME_JITTER for s in steps), steps
    assert all(p.pts == p.dts for p in pkts)


def test_camera_serves_h264_with_file_timestamps(rtsp_server: RtspServer) -> None:
    with open_camera(rtsp_server.url("/cam")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
        assert stream.time_base == Fraction(1, 90000)
        pkts = []
        for packet in packets(container):
            pkts.append(packet)
            if len(pkts) == 3 * FPS:
                break

    keyframes = [i for i, p in enumerate(pkts) if p.is_keyframe]
    assert keyframes and keyframes[0] < FPS, keyframes  # within the first GOP
    assert keyframes == [0, FPS, 2 * FPS], keyframes  # file from its start, 1 s GOP
    # The first packet (the keyframe, SEI+SPS+PPS+IDR) arrives without timestamps; from the
    # second on pts == dts, one frame apart, starting one frame after 0.
    assert pkts[0].pts is None and pkts[0].dts is None
    assert abs(pkts[1].dts - FRAME_TICKS) <= FRAME_JITTER
    assert_frame_steps(pkts[1:])
    types = [n[0] & 0x1F for n in nal_units(pkts[0])]
    assert {7, 8, 5} <= set(types), types  # SPS, PPS and an IDR slice in the first packet


def test_ffprobe_sees_h264(rtsp_server: RtspServer) -> None:
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ffprobe missing: apt-get install -y ffmpeg")
        pytest.skip("ffprobe missing")
    res = subprocess.run(
        [
            ffprobe, "-rtsp_transport", "tcp", "-v", "error", "-read_intervals", "%+2",
            "-show_entries", "stream=codec_name", "-of", "default=noprint_wrappers=1:nokey=1",
            rtsp_server.url("/cam"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["h264"]


def test_stop_refuses_and_start_serves_again(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url("/cam")
    assert read_packets(url, 3)[0].is_keyframe

    # A session open while the server stops sees its stream end promptly.
    with open_camera(url) as container:
        it = packets(container)
        next(it)
        rtsp_server.stop()
        t0 = time.monotonic()
        with pytest.raises((StopIteration, av.FFmpegError, OSError)):
            for _ in range(10 * FPS):  # more than the receive buffer can hold
                next(it)
        assert time.monotonic() - t0 < READ_TIMEOUT

    t0 = time.monotonic()
    with pytest.raises((ConnectionRefusedError, av.FFmpegError)):
        open_camera(url)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((rtsp_server.host, rtsp_server.port), timeout=2.0)

    rtsp_server.start()
    assert rtsp_server.url("/cam") == url
    pkts = read_packets(url, 5)
    assert pkts[0].is_keyframe
    assert_frame_steps(pkts[1:])


def test_each_session_gets_the_file_from_its_start(
    rtsp_server: RtspServer, rtsp_clip: Path
) -> None:
    url = rtsp_server.url("/cam")
    count = 10
    with open_camera(url) as first:
        it = packets(first)
        a = [next(it) for _ in range(count + FPS)]  # session A is ~1.5 s into the file
        b = read_packets(url, count)  # session B opens while A still plays
        a.append(next(it))

    a = a[:count]
    assert [bytes(p) for p in a] == [bytes(p) for p in b]
    assert [p.pts for p in a] == [p.pts for p in b]
    # The same coded pictures as the file's first frames, byte for byte.
    source = file_packets(rtsp_clip, count)
    for i in range(count):
        assert slices(nal_units(a[i])) == slices(avcc_nal_units(source[i])), i


def test_loop_keeps_timestamps_going(
    tmp_path: Path, rtsp_server_factory: RtspServerFactory
) -> None:
    clip = make_h264_mkv(tmp_path / "two-seconds.mkv", seconds=2)
    server = rtsp_server_factory({"/cam": clip}, loop=True)
    pkts = read_packets(server.url("/cam"), 3 * FPS + 2)  # across both wraps
    assert [i for i, p in enumerate(pkts) if p.is_keyframe] == [0, FPS, 2 * FPS, 3 * FPS]
    assert_frame_steps(pkts[1:])
    assert pkts[2 * FPS].dts == 2 * 90000  # loop n starts at n x the file's duration
    assert pkts[3 * FPS].dts == 3 * 90000
    # The picture after the wrap is the file's first again.
    assert slices(nal_units(pkts[2 * FPS])) == slices(nal_units(pkts[0]))
    assert slices(nal_units(pkts[2 * FPS + 1])) == slices(nal_units(pkts[1]))


def test_without_loop_the_stream_ends_with_the_file(
    tmp_path: Path, rtsp_server_factory: RtspServerFactory
) -> None:
    clip = make_h264_mkv(tmp_path / "two-seconds.mkv", seconds=2)
    server = rtsp_server_factory({"/cam": clip, "/cam2": clip})
    t0 = time.monotonic()
    with open_camera(server.url("/cam2")) as container:
        pkts = list(packets(container))
    assert len(pkts) == 2 * FPS
    assert time.monotonic() - t0 < 2 + READ_TIMEOUT
    assert_frame_steps(pkts[1:])
