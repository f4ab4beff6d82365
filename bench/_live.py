"""P2 child: N live cameras through the real IngestService for a fixed wall time.

``python -m bench._live N SECONDS DATA_DIR SOURCE [WARMUP]`` opens a fresh vault (SQLite +
filesystem store) under DATA_DIR, configures N cameras (60 s segments) and runs IngestService
for SECONDS of wall time, then stops it (open segments are closed and the spool drained).

- SOURCE ``rtsp://HOST:PORT`` (the default mode of ``bench.p2_live_streams``): N
  ``kind="rtsp"`` cameras at ``SOURCE/cam1`` .. ``SOURCE/camN`` (a gst-rtsp-server the parent
  runs), opened by the recorder through ``ingest.sources.open_source`` (RTSP over TCP): RTSP
  and RTP reception, depayloading and demux are in the measured process. Nothing is patched.
- SOURCE a clip path: N ``kind="synthetic"`` cameras (1280x720, 15 fps). Each replays the clip
  in a loop, paced at real time, through ``SyntheticSource``. The clip replaces what
  ``simulate.render_clip`` would draw (its flat scenes encode to ~0.35 Mbit/s at 720p, far
  from a 4 Mbit/s camera); nothing else is changed. Nothing is rendered here.

CPU is ``getrusage(RUSAGE_SELF)`` (all threads) from the start of the window to just after
``service.stop()`` (segments closed, spool drained): every packet received, written, fsynced,
thumbnailed, hashed, encrypted, stored and catalogued in the window. The window opens WARMUP
seconds (default 5) after ``service.start()`` — sources open, first segments open — and not
before every camera records (an RTSP camera's first packet carries no timestamps and is
dropped, so recording starts at its second keyframe, one GOP in). The footage it is compared
with is what each camera recorded from the start of the window on (total committed media minus
what was recorded before it). Start-up CPU is reported separately. Prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def main(argv: list[str]) -> int:
    cameras, seconds = int(argv[0]), float(argv[1])
    data_dir, source = Path(argv[2]), argv[3]
    warmup = float(argv[4]) if len(argv) > 4 else 5.0
    rtsp = source.startswith("rtsp://")
    clip = None if rtsp else Path(source).resolve()

    from sqlmodel import select

    import ingest.simulate
    from cctv_vault.runtime import IngestService, open_vault
    from ingest.spool import CLEAN_MARK
    from vault.check import run_check
    from vault.config import (
        CameraConfig,
        RetentionPolicyConfig,
        SiteConfig,
        SourceConfig,
        VaultConfig,
    )
    from vault.db import unit_of_work
    from vault.models import Gap, HealthState, Segment
    from vault.settings import Settings

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("libav").setLevel(logging.ERROR)

    rendered: list[str] = []

    def _use_bench_clip(path: Path, **_params: Any) -> Path:
        assert clip is not None
        rendered.append(path.name)
        return clip

    if not rtsp:
        # The recorder looks render_clip up in ingest.simulate when a synthetic camera opens.
        ingest.simulate.render_clip = _use_bench_clip  # type: ignore[assignment]

    def _source(i: int) -> SourceConfig:
        if rtsp:
            return SourceConfig(kind="rtsp", url=f"{source.rstrip('/')}/cam{i + 1}")
        return SourceConfig(
            kind="synthetic", width=1280, height=720, fps=15, gop_seconds=2.0, loop_seconds=60
        )

    settings = Settings(data_dir=data_dir)
    ctx = open_vault(settings)
    config = VaultConfig(
        sites=[SiteConfig(id="bench", name="Bench DC")],
        retention_policies=[RetentionPolicyConfig(id="p90", days=90)],
        cameras=[
            CameraConfig(
                id=f"cam-{i:02d}",
                site="bench",
                name=f"Bench live camera {i}",
                retention_policy="p90",
                segment_seconds=60,
                source=_source(i),
            )
            for i in range(cameras)
        ],
    )
    service = IngestService(ctx, config, settings)

    ids = [c.id for c in config.cameras]
    us, ss = _cpu()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    service.start()
    time.sleep(warmup)
    # Open the window only once every camera records (at most 30 s more): a camera still
    # connecting or waiting for its first usable keyframe would count CPU without footage.
    while time.monotonic() < started + warmup + 30 and not all(
        (h := service.health.get(c)) is not None and h[0] == HealthState.RECORDING for c in ids
    ):
        time.sleep(0.1)
    window_from = datetime.now(UTC)
    u0, s0 = _cpu()
    w0 = time.monotonic()
    time.sleep(max(0.0, w0 + seconds - time.monotonic()))
    stop_at = datetime.now(UTC)
    backlog = len(service.spool.closed())  # closed segments not yet committed
    u1, s1 = _cpu()
    service.stop()
    u2, s2 = _cpu()
    wall = time.monotonic() - w0
    # The spool's own lock and the orderly-stop mark are not footage left behind.
    left = sorted(
        p.name
        for p in settings.resolved_spool_dir.iterdir()
        if p.name not in (".lock", CLEAN_MARK)
    )

    with unit_of_work(ctx.engine) as session:
        segments = list(session.exec(select(Segment)))
        all_gaps = list(session.exec(select(Gap)))
    # Gaps inside the window fail the run; a gap before it (a camera that took a reconnect
    # to come up) is reported.
    gaps: list[str] = []
    gaps_outside: list[str] = []
    for g in all_gaps:
        inside = g.end > window_from and g.start < stop_at
        (gaps if inside else gaps_outside).append(f"{g.camera_id}: {g.reason}")
    per_camera: dict[str, dict[str, Any]] = {}
    for seg in segments:
        cam = per_camera.setdefault(
            seg.camera_id,
            {
                "segments": 0,
                "media_s": 0.0,
                "bytes": 0,
                "frames": 0,
                "first_start": seg.start,
                "last_end": seg.end,
            },
        )
        cam["segments"] += 1
        cam["media_s"] += seg.media_duration
        cam["bytes"] += seg.bytes
        cam["frames"] += seg.frames
        cam["first_start"] = min(cam["first_start"], seg.start)
        cam["last_end"] = max(cam["last_end"], seg.end)
    report = run_check(ctx)
    ctx.engine.dispose()
    cams = [
        {
            "camera": cid,
            "segments": c["segments"],
            "media_s": round(c["media_s"], 3),
            # Footage recorded inside the measured window (after the warm-up).
            "window_media_s": round(
                c["media_s"] - max(0.0, (window_from - c["first_start"]).total_seconds()), 3
            ),
            "bytes": c["bytes"],
            "frames": c["frames"],
            # From service.start() to the start of the first segment: connecting, plus (RTSP)
            # the first GOP whose untimestamped keyframe is dropped.
            "first_segment_after_s": round((c["first_start"] - started_at).total_seconds(), 3),
            "mbit_s": round(c["bytes"] * 8 / c["media_s"] / 1e6, 3) if c["media_s"] else 0.0,
            # How far the recorded media lags the wall clock at the stop request: a camera
            # whose ingest keeps up is behind by less than a frame or two.
            "lag_s": round((stop_at - c["last_end"]).total_seconds(), 3),
        }
        for cid, c in sorted(per_camera.items())
    ]
    print(
        json.dumps(
            {
                "source": "rtsp" if rtsp else "synthetic",
                "cameras": cameras,
                "seconds": seconds,
                "warmup_s": warmup,
                "window_opened_after_s": round((window_from - started_at).total_seconds(), 3),
                "cpu_startup_s": round((u0 - us) + (s0 - ss), 3),
                "cpu_user_s": round(u2 - u0, 3),
                "cpu_sys_s": round(s2 - s0, 3),
                "cpu_s": round((u2 - u0) + (s2 - s0), 3),
                "cpu_running_s": round((u1 - u0) + (s1 - s0), 3),
                "cpu_stop_s": round((u2 - u1) + (s2 - s1), 3),
                "wall_s": round(wall, 3),
                "backlog_before_stop": backlog,
                "spool_left": left,
                "committed": service.committer.committed,
                "gaps": gaps,
                "gaps_before_window": gaps_outside,
                "check_ok": report.ok,
                "check_decrypted": report.decrypted,
                "violations": [v.detail for v in report.violations[:3]],
                "clip_used_for": len(rendered),
                "per_camera": cams,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
