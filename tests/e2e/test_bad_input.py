"""Bad input: broken sources get a clear health state; other cameras are unaffected; nothing
invalid is committed; a timestamp jump starts a new run with a gap."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cctv_vault.runtime import IngestService
from ingest.simulate import render_clip
from tests.e2e.harness import (
    assert_contiguous_within_runs,
    config_text,
    ffprobe,
    gaps,
    plaintext_file,
    segments,
    synthetic,
    wait_until,
)
from vault.check import run_check
from vault.config import parse_config
from vault.lifecycle import VaultContext
from vault.settings import Settings

pytestmark = pytest.mark.slow


def _clip(path: Path, seconds: int = 8) -> Path:
    return render_clip(
        path, camera_name="bad-input", width=320, height=180, fps=10, seconds=seconds,
        gop_seconds=1.0,
    )


def _with_jump(src: Path, dst: Path, at_s: float, jump_s: float) -> Path:
    """Remux ``src`` adding ``jump_s`` to every timestamp after ``at_s`` (no re-encode)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="matroska") as out:
        ins = inp.streams.video[0]
        outs = out.add_stream_from_template(ins)
        offset = None
        for pkt in inp.demux(ins):
            if pkt.dts is None:
                continue
            if offset is None and pkt.pts * ins.time_base >= at_s and pkt.is_keyframe:
                offset = int(jump_s / ins.time_base)
            if offset:
                pkt.pts += offset
                pkt.dts += offset
            pkt.stream = outs
            out.mux(pkt)
    return dst


def _mpeg4(dst: Path) -> Path:
    with av.open(str(dst), "w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 10)
        for i in range(20):
            img = np.full((120, 160, 3), i * 10, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dst



def test_broken_sources_do_not_disturb_a_healthy_camera(ctx: VaultContext, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n" * 200)
    clip = _clip(tmp_path / "good.mkv")
    truncated = tmp_path / "truncated.mkv"
    data = clip.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    mpeg4 = _mpeg4(tmp_path / "mpeg4.mkv")
    jump = _with_jump(clip, tmp_path / "jump.mkv", at_s=4.0, jump_s=3600.0)

    def file_source(path: Path) -> str:
        return f'{{ kind = "file", url = "{path}" }}'

    config = parse_config(
        config_text(
            [
                ("cam-live", synthetic()),
                ("cam-text", file_source(text)),
                ("cam-mpeg4", file_source(mpeg4)),
                ("cam-truncated", file_source(truncated)),
                ("cam-jump", file_source(jump)),
                ("cam-missing", '{ kind = "rtsp", url = "rtsp://127.0.0.1:9/none", '
                                "open_timeout_s = 1, read_timeout_s = 1 }"),
            ],
            segment_seconds=2,
        )
    )
    service = IngestService(ctx, config, Settings(data_dir=tmp_path / "data"))
    service.start()
    try:
        def state(cam: str) -> tuple[str, str] | None:
            return service.health.get(cam)

        # FFmpeg reads a text file as an "ansi" video: either way it is refused, with a reason.
        wait_until(
            lambda: (s := state("cam-text"))
            and s[0] == "offline"
            and ("not-video" in s[1] or "unsupported-codec" in s[1]),
            30,
            "the text file to be refused",
        )
        wait_until(
            lambda: (s := state("cam-mpeg4")) and "unsupported-codec" in s[1], 30, "codec refusal"
        )
        wait_until(
            lambda: (s := state("cam-missing")) and s[0] in ("reconnecting", "offline"),
            30,
            "the dead camera to be reconnecting",
        )
        wait_until(lambda: len(segments(ctx, "cam-live")) >= 3, 60, "the live camera to record")
        wait_until(
            lambda: all(state(c) == ("stopped", "") for c in ("cam-truncated", "cam-jump")),
            60,
            "the file cameras to finish",
        )
        wait_until(lambda: not service.spool.closed(), 60, "the spool to drain")
    finally:
        service.stop()

    assert "mpeg4" in (state("cam-mpeg4") or ("", ""))[1]
    assert segments(ctx, "cam-text") == [] and segments(ctx, "cam-mpeg4") == []
    assert segments(ctx, "cam-missing") == []
    assert [g.reason for g in gaps(ctx, "cam-missing")], "the dead camera's outage is recorded"

    # Whatever was committed from the truncated file is valid footage, and nothing more.
    for cam in ("cam-truncated", "cam-jump", "cam-live"):
        segs = segments(ctx, cam)
        assert segs, cam
        assert_contiguous_within_runs(segs)
        for seg in segs:
            probe = ffprobe(plaintext_file(ctx, seg, tmp_path))
            assert probe["streams"][0]["codec_name"] == "h264"
            assert probe["packets"][0]["flags"].startswith("K")
            assert len(probe["packets"]) == seg.frames
    truncated_seconds = sum(s.media_duration for s in segments(ctx, "cam-truncated"))
    assert 2.0 <= truncated_seconds < 8.0

    jumped = segments(ctx, "cam-jump")
    assert len({s.run_id for s in jumped}) == 2
    jump_gaps = [g for g in gaps(ctx, "cam-jump") if "jumped" in g.reason]
    assert len(jump_gaps) == 1
    assert sum(s.media_duration for s in jumped) == pytest.approx(8.0, abs=0.2)
    assert run_check(ctx).ok


def test_camera_credentials_never_reach_logs_catalog_or_health(
    ctx: VaultContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "pw-" + "9f8e7d6c5b4a"
    monkeypatch.setenv("CAM_SECRET_USERNAME", "operator")
    monkeypatch.setenv("CAM_SECRET_PASSWORD", password)
    config = parse_config(
        config_text(
            [("cam-secret", '{ kind = "rtsp", url = "rtsp://127.0.0.1:9/stream?channel=1", '
                            'credentials_env = "CAM_SECRET", open_timeout_s = 1 }')],
        )
    )
    caplog.set_level("DEBUG")
    service = IngestService(ctx, config, Settings(data_dir=tmp_path / "data"))
    service.start()
    try:
        wait_until(
            lambda: (h := service.health.get("cam-secret")) and h[0] == "reconnecting",
            30,
            "the unreachable camera to be reconnecting",
        )
        health = service.health.get("cam-secret")
    finally:
        service.stop()
    from sqlmodel import select

    from vault.db import unit_of_work
    from vault.models import Camera

    with unit_of_work(ctx.engine) as session:
        camera = session.exec(select(Camera)).one()
    outage = gaps(ctx, "cam-secret")
    assert outage, "the outage is recorded"
    assert "refused" in (health or ("", ""))[1]
    for text in (caplog.text, camera.source_ref, str(health), *[g.reason for g in outage]):
        assert password not in text
        assert "operator:" not in text
    assert camera.source_ref == "rtsp://127.0.0.1:9/stream?channel=1"
    assert "***@127.0.0.1:9" in caplog.text, "the credentialed URL was used, and redacted"
