"""P2 — live RTSP ingest CPU per camera, against one core (DESIGN §11: <= 1% per 4 Mbit/s stream).

For each N (default 1, 4, 8) a child process (``python -m bench._live``) runs the real
IngestService with N live cameras for a fixed wall time. The cameras' footage is a cached
1280x720 15 fps H.264 clip at ~4 Mbit/s (GOP 2 s, no B-frames), encoded once before any timing.

``--source rtsp`` (default): the parent starts one gst-rtsp-server (the tests' RTSP peer,
``tests/support/rtsp.py``, a separate process whose CPU is not counted) serving the clip on
``/cam1`` .. ``/camN`` in a loop (continuous timestamps, paced at real time), and the child's
cameras are ``kind="rtsp"`` sources at those URLs: the recorder opens them through
``ingest.sources.open_source`` (RTSP over TCP), so RTSP/RTP reception is measured too.
``--source synthetic``: each camera replays the clip through ``SyntheticSource`` (Matroska
demux paced at real time, no network), as before.

The child measures its own CPU (``getrusage``, all threads) from a 5 s warm-up after service
start (and not before every camera records: sources open, first segments open, and for RTSP
the first GOP, whose untimestamped first keyframe is dropped) to service stop (segments closed,
spool drained, so every recorded second is also committed), and the parent verifies the work:
every camera recorded the whole window, no gap inside it, empty spool, ``run_check`` ok.

Per camera, % of one core = CPU seconds / seconds of footage recorded in the window,
normalized to a 4 Mbit/s stream by the measured bitrate (committed bytes / recorded seconds).
One core then sustains 100 / that many such cameras. Default: 60 s per N, two rounds (medians);
``--quick``: 20 s per N, one round.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._common import (
    OUT,
    PYTHON,
    Measured,
    last_json_line,
    machine,
    median,
    run_measured,
    settle,
    table,
    write_result,
)
from bench._media import describe, encode_clip

if TYPE_CHECKING:
    from tests.support.rtsp import RtspServer

NAME = "p2_live_streams"
TARGET_PCT = 1.0  # % of one core per 4 Mbit/s stream
REFERENCE_MBIT = 4.0
WARMUP = 5.0  # seconds after service start before the CPU window opens (quick: 3)
CLIP = {
    "width": 1280,
    "height": 720,
    "fps": 15,
    "seconds": 60,
    "gop_seconds": 2.0,
    "bitrate": 4_000_000,
    "container": "mkv",
}


def render_clip_bitrate() -> float:
    """What the product's own synthetic clip yields at 1280x720 (cached; informational)."""
    from ingest.simulate import render_clip

    path = render_clip(
        OUT / "p2-render-clip-720p.mkv",
        camera_name="bench",
        width=1280,
        height=720,
        fps=15,
        seconds=30,
        gop_seconds=2.0,
    )
    return float(describe(path)["mbit_s"])


def run_one(
    cameras: int, seconds: float, clip: Path, work: Path, warmup: float, source: str
) -> dict[str, Any]:
    d = work / f"n{cameras}"
    shutil.rmtree(d, ignore_errors=True)
    server_cpu: float | None = None
    if source == "rtsp":
        from bench import _rtsp

        with _rtsp.serving(clip, cameras) as server:
            m = _run_child(cameras, seconds, d, server.base_url, warmup, server)
            server_cpu = _rtsp.server_cpu_s(server)
    else:
        m = _run_child(cameras, seconds, d, str(clip), warmup, None)
    if m.returncode != 0:
        raise SystemExit(f"live run N={cameras} failed: rc={m.returncode}\n{m.stderr[-4000:]}")
    r = last_json_line(m.stdout)
    if r["source"] != source:
        raise SystemExit(f"N={cameras}: the child ran {r['source']} cameras, not {source}")
    cams = r["per_camera"]
    media = [c["media_s"] for c in cams]  # whole run, warm-up included
    window = [c["window_media_s"] for c in cams]  # inside the measured window
    problems = []
    if len(cams) != cameras:
        problems.append(f"{len(cams)} of {cameras} cameras committed footage")
    if window and min(window) < seconds - 1.0:  # keeping up: the window is covered
        problems.append(f"a camera recorded only {min(window):.1f} s of the {seconds:.0f} s window")
    if r["spool_left"]:
        problems.append(f"spool not drained: {r['spool_left'][:4]}")
    if r["gaps"]:
        problems.append(f"gaps inside the window: {r['gaps'][:3]}")
    if not r["check_ok"] or r["check_decrypted"] != sum(c["segments"] for c in cams):
        problems.append(f"run_check failed: {r['violations']}")
    if source == "synthetic" and r["clip_used_for"] < cameras:
        problems.append("the bench clip was not used (render_clip was not replaced)")
    if problems:
        raise SystemExit(f"N={cameras}: the run did not do the work: " + "; ".join(problems))
    recorded = sum(window)
    mbit = sum(c["bytes"] for c in cams) * 8 / sum(media) / 1e6
    pct = 100 * r["cpu_s"] / recorded  # % of one core per camera (CPU s per footage second)
    norm = pct * REFERENCE_MBIT / mbit
    shutil.rmtree(d)
    settle()
    return {
        **{
            k: r[k]
            for k in (
                "window_opened_after_s",
                "cpu_startup_s",
                "cameras",
                "seconds",
                "cpu_s",
                "cpu_user_s",
                "cpu_sys_s",
                "cpu_running_s",
                "cpu_stop_s",
                "wall_s",
                "backlog_before_stop",
                "committed",
            )
        },
        "process_cpu_s": round(m.cpu_s, 3),  # whole child, imports included (wait4)
        "recorded_s": round(recorded, 3),
        "min_recorded_s": round(min(window), 3),
        "max_lag_s": max(c["lag_s"] for c in cams),
        "first_segment_after_s": max(c["first_segment_after_s"] for c in cams),
        "gaps_before_window": r["gaps_before_window"],
        **({"server_cpu_s": round(server_cpu, 2)} if server_cpu is not None else {}),
        "mbit_s": round(mbit, 3),
        "pct_core_per_camera": round(pct, 4),
        "pct_core_per_camera_4mbit": round(norm, 4),
        "cameras_per_core": round(100 / norm, 1),
        "keeps_up": r["backlog_before_stop"] <= cameras and min(window) >= seconds - 1.0,
    }


def _run_child(
    cameras: int,
    seconds: float,
    d: Path,
    source: str,
    warmup: float,
    server: RtspServer | None,
) -> Measured:
    cmd = [PYTHON, "-m", "bench._live", str(cameras), str(seconds), str(d), source, str(warmup)]
    m = run_measured(cmd, d)
    if server is not None and not server.running:
        raise SystemExit(f"the RTSP server died during the run:\n{server.log()[-2000:]}")
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.p2_live_streams", description=__doc__)
    parser.add_argument(
        "--source",
        choices=("rtsp", "synthetic"),
        default="rtsp",
        help="rtsp: cameras read a local gst-rtsp-server (default); synthetic: paced file replay",
    )
    parser.add_argument("--quick", action="store_true", help="20 s per N")
    parser.add_argument("--seconds", type=float, help="wall time per N (default 60, quick 20)")
    parser.add_argument("--cameras", default="1,4,8", help="comma-separated N values")
    parser.add_argument("--rounds", type=int, help="runs per N, medians shown; default 2, quick 1")
    parser.add_argument("--strict", action="store_true", help="exit 1 when above the target")
    args = parser.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    ns = [int(x) for x in args.cameras.split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    started = time.monotonic()
    source = args.source
    if source == "rtsp":
        from bench import _rtsp

        _rtsp.require_peer()
    # A SIGTERM unwinds like Ctrl-C, so the RTSP server of the current run is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"P2 live streams ({source} cameras) — preparing the clip (cached)", flush=True)
    clip = encode_clip(OUT / "p2-clip-720p15-4mbit-60s.mkv", **CLIP)  # type: ignore[arg-type]
    info = describe(clip)
    own: float | None = None
    if source == "synthetic":
        own = render_clip_bitrate()
        print(
            f"  simulate.render_clip at 1280x720@15 yields {own:.2f} Mbit/s: using {clip.name} "
            f"instead ({info['mbit_s']:.2f} Mbit/s, {info['duration_s']:.0f} s loop)",
            flush=True,
        )
    else:
        print(
            f"  each camera: rtsp://127.0.0.1:PORT/camK (TCP) from one gst-rtsp-server looping "
            f"{clip.name} ({info['mbit_s']:.2f} Mbit/s, {info['duration_s']:.0f} s file); "
            f"the server's CPU is not counted",
            flush=True,
        )
    work = OUT / "work-p2"
    shutil.rmtree(work, ignore_errors=True)

    by_n: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
    for _round in range(rounds):
        for n in ns:
            r = run_one(n, seconds, clip, work, 3.0 if args.quick else WARMUP, source)
            by_n[n].append(r)
            server = (
                f" (server, not counted: {r['server_cpu_s']:.2f} s)" if "server_cpu_s" in r else ""
            )
            print(
                f"  N={n}: cpu {r['cpu_s']:.2f} s over {r['wall_s']:.1f} s wall, "
                f"{r['pct_core_per_camera_4mbit']:.2f}% of a core per 4 Mbit/s camera{server}",
                flush=True,
            )
    # Per N, the median of every figure over the rounds; every run is kept in the JSON.
    runs = []
    for n in ns:
        row: dict[str, Any] = {}
        for key, value in by_n[n][0].items():
            if isinstance(value, bool):
                row[key] = all(r[key] for r in by_n[n])
            elif isinstance(value, int | float):
                row[key] = round(median([float(r[key]) for r in by_n[n]]), 4)
        row["cameras"] = n
        row["cameras_per_core"] = round(100 / row["pct_core_per_camera_4mbit"], 1)
        row["max_lag_s"] = max(r["max_lag_s"] for r in by_n[n])  # worst, not median
        row["backlog_before_stop"] = max(r["backlog_before_stop"] for r in by_n[n])
        row["first_segment_after_s"] = max(r["first_segment_after_s"] for r in by_n[n])
        row["rounds"] = by_n[n]
        runs.append(row)
    shutil.rmtree(work, ignore_errors=True)

    rows = [
        [
            "cameras",
            "CPU s",
            "user",
            "sys",
            "recorded s/cam",
            "Mbit/s",
            "% core/cam",
            "% core/cam @4M",
            "cams/core",
            "lag s",
            "keeps up",
            "each run % @4M",
        ]
    ]
    for r in runs:
        rows.append(
            [
                str(r["cameras"]),
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_user_s']:.2f}",
                f"{r['cpu_sys_s']:.2f}",
                f"{r['recorded_s'] / r['cameras']:.1f}",
                f"{r['mbit_s']:.2f}",
                f"{r['pct_core_per_camera']:.2f}",
                f"{r['pct_core_per_camera_4mbit']:.2f}",
                f"{r['cameras_per_core']:.0f}",
                f"{r['max_lag_s']:+.2f}",
                "yes" if r["keeps_up"] else "NO",
                " ".join(f"{x['pct_core_per_camera_4mbit']:.2f}" for x in r["rounds"]),
            ]
        )
    largest = runs[-1]
    headline = largest["pct_core_per_camera_4mbit"]
    ratio = headline / TARGET_PCT
    verdict = "OK" if headline <= TARGET_PCT else "ABOVE TARGET"
    print()
    print(table(rows))
    print(
        f"\nper 4 Mbit/s camera at N={largest['cameras']}: {headline:.2f}% of one core "
        f"= {ratio:.2f}x the target ({TARGET_PCT}%: {verdict}); one core sustains "
        f"~{largest['cameras_per_core']:.0f} such cameras "
        f"(median over N: {median([r['pct_core_per_camera_4mbit'] for r in runs]):.2f}%)"
    )
    if not all(r["keeps_up"] for r in runs):
        print("WARNING: ingest did not keep up with real time in at least one run")

    result = {
        "name": NAME,
        "source": source,
        "quick": args.quick,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "warmup_s": 3.0 if args.quick else WARMUP,
        "clip": {**info, "path": clip.name, **CLIP},
        "render_clip_mbit_s_1280x720": own,
        "runs": runs,
        "headline_cameras": largest["cameras"],
        "pct_core_per_camera_4mbit": headline,
        "ratio_to_target": round(ratio, 3),
        "target_pct": TARGET_PCT,
        "meets_target": headline <= TARGET_PCT,
        "cameras_per_core": largest["cameras_per_core"],
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
    }
    path = write_result(NAME if source == "rtsp" else f"{NAME}-synthetic", result)
    print(f"\nwrote {path.relative_to(OUT.parent.parent)} in {result['elapsed_s']:.0f} s")
    return 1 if args.strict and headline > TARGET_PCT else 0


if __name__ == "__main__":
    sys.exit(main())
