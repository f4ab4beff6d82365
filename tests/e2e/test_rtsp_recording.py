"""Recording from a real RTSP server (gst-rtsp-server): native segments, outages and gaps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from cctv_vault.runtime import IngestService
from ingest.fmp4 import h264_nal_units
from tests.e2e.harness import (
    assert_contiguous_within_runs,
    config_text,
    ffprobe,
    gaps,
    plaintext_file,
    segments,
    wait_until,
)
from vault.check import run_check
from vault.config import parse_config
from vault.lifecycle import VaultContext, read_thumbnail
from vault.settings import Settings

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]

TARGET_S = 4
GOP_S = 1.0
PARAMETER_SETS = {6, 7, 8, 9}  # SEI, SPS, PPS, AUD: framing the transport may add or move


def _slices(path: Path) -> list[bytes]:
    """Every coded-slice NAL unit of a file, in decoding order."""
    out: list[bytes] = []
    with av.open(str(path)) as container:
        for pkt in container.demux(container.streams.video[0]):
            if pkt.size:
                out += [n for n in h264_nal_units(bytes(pkt)) if n[0] & 0x1F not in PARAMETER_SETS]
    return out



def _service(ctx: VaultContext, url: str, data: Path) -> IngestService:
    source = f'{{ kind = "rtsp", url = "{url}", open_timeout_s = 3, read_timeout_s = 3 }}'
    config = parse_config(config_text([("cam-rtsp", source)], segment_seconds=TARGET_S))
    return IngestService(ctx, config, Settings(data_dir=data))


def test_six_native_segments_from_rtsp(
    ctx: VaultContext, tmp_path: Path, rtsp_server: Any, rtsp_clip: Path
) -> None:
    service = _service(ctx, rtsp_server.url("/cam"), tmp_path / "data")
    service.start()
    try:
        wait_until(lambda: len(segments(ctx)) >= 6, 90, "six committed segments")
    finally:
        service.stop()

    segs = segments(ctx, "cam-rtsp")
    assert len({s.run_id for s in segs}) == 1
    assert_contiguous_within_runs(segs)
    recorded: list[bytes] = []
    for seg in segs:
        path = plaintext_file(ctx, seg, tmp_path)
        probe = ffprobe(path)
        stream = probe["streams"][0]
        assert stream["codec_name"] == "h264"
        assert (stream["width"], stream["height"]) == (seg.width, seg.height)
        packets = probe["packets"]
        assert packets[0]["flags"].startswith("K"), "a segment starts on a keyframe"
        assert float(packets[0]["dts_time"]) == 0.0, "timestamps rebased to zero"
        assert len(packets) == seg.frames
        assert seg.purpose == "security"
        thumb = cv2.imdecode(np.frombuffer(read_thumbnail(ctx, seg), np.uint8), cv2.IMREAD_COLOR)
        assert thumb is not None and thumb.shape[1] <= 320, "a small JPEG of the first keyframe"
        recorded += _slices(path)
    for seg in segs[:6]:
        if seg is not segs[-1]:  # the last one was closed by the stop, not by a cut
            assert TARGET_S <= seg.media_duration < TARGET_S + GOP_S + 0.01
            assert (seg.end - seg.start).total_seconds() == pytest.approx(seg.media_duration)
    # Packet copy, never a transcode: from the keyframe where recording began, every slice
    # equals the camera's, byte for byte and in order (the server may start a session a few
    # frames into its file, so the start is located, not assumed).
    source = _slices(rtsp_clip)
    assert recorded[0] in source, "the first recorded slice is one of the camera's"
    first = source.index(recorded[0])
    assert recorded == source[first : first + len(recorded)], f"differs after slice {first}"
    assert run_check(ctx).ok


def test_rtsp_outage_is_a_gap_and_recording_resumes(
    ctx: VaultContext, tmp_path: Path, rtsp_server: Any
) -> None:
    service = _service(ctx, rtsp_server.url("/cam"), tmp_path / "data")
    service.start()
    try:
        wait_until(lambda: len(segments(ctx)) >= 2, 60, "recording before the outage")
        rtsp_server.stop()
        stopped_at = time.time()
        try:
            wait_until(
                lambda: (h := service.health.get("cam-rtsp")) and h[0] == "reconnecting",
                30,
                "the recorder to notice",
            )
            time.sleep(max(0.0, 20 - (time.time() - stopped_at)))  # the outage: 20 s
        finally:
            rtsp_server.start()
        first_run = segments(ctx)[0].run_id
        wait_until(
            lambda: any(s.run_id != first_run for s in segments(ctx)), 60, "a segment after"
        )
        wait_until(
            lambda: service.health.get("cam-rtsp") == ("recording", ""), 30, "health recovered"
        )
    finally:
        service.stop()

    segs = segments(ctx, "cam-rtsp")
    assert len({s.run_id for s in segs}) == 2
    assert_contiguous_within_runs(segs)
    before = [s for s in segs if s.run_id == first_run]
    after = [s for s in segs if s.run_id != first_run]
    outage = [g for g in gaps(ctx, "cam-rtsp") if g.start < after[0].start]
    assert len(outage) == 1
    gap = outage[0]
    assert gap.start == before[-1].end, "the gap starts where the footage stopped"
    assert gap.end == after[0].start, "and ends where it resumed"
    assert (gap.end - gap.start).total_seconds() >= 19
    assert gap.reason  # e.g. "end of stream" or "source timeout: ..."
    assert run_check(ctx).ok
