"""P6 — playback time to first byte of a 1-minute segment, against reading the plaintext file.

Input: P1's cached 120 s clip (1920x1080, 15 fps H.264, ~4 Mbit/s, GOP 2 s), ingested by the
real IngestService (``python -m bench._ingest_file``: file camera, 60 s segments, SQLite
catalog, filesystem store, AES-256-GCM) into a fresh vault. Its first segment — 60 s, ~30 MB —
is the one played. Every variant starts from the segment id, as the API does after its
authorization and audit steps, and stops the clock at the first byte it could send:

* anchor ``file: first 64 KiB``: open the plaintext MP4 on disk and read its first 64 KiB (what a
  static file server does before its first byte); ``file: whole`` reads all of it;
* ``segment``: the per-segment media path — catalog row, then
  ``vault.lifecycle.open_segment_for_playback`` (fetch, decrypt, authenticate; no re-hash);
  ``segment + re-hash`` is the same with ``read_segment`` (SHA-256 as well), to show what the
  re-hash would cost;
* ``clip``: the clip path — ``segments_in_range`` for the segment's span, then
  ``vault.media.open_playback_clip`` and the first chunk of the MP4 (``ftyp``+``moov``);
  ``clip from 55 s`` asks for a window starting 55 s into the segment (demuxes up to the last
  keyframe first), ``clip, last byte`` times the whole 60 s clip.

Variants run round-robin, ``--reps`` times each, so machine noise spreads over all of them. The
store's files are in the page cache after the first round (hot footage, as playback mostly is).
Each result is checked: the segment bytes equal the plaintext file, every clip starts with
``ftyp``. Prints median and p90 per variant, ratios to the anchors, and a verdict against the
target (<= 50 ms p50 for the segment and clip paths).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bench._common import OUT, PYTHON, child_env, machine, median, table, write_result
from bench._media import describe, encode_clip
from bench.p1_ingest_cpu import CLIP
from cctv_vault.runtime import open_vault
from vault.catalog import segments_in_range
from vault.db import unit_of_work
from vault.lifecycle import open_segment_for_playback, read_segment
from vault.media import open_playback_clip
from vault.models import Segment
from vault.settings import Settings
from vault.timerange import TimeRange

NAME = "p6_playback_ttfb"
TARGET_MS = 50.0
FIRST_READ = 64 * 1024


def build_vault(work: Path) -> Path:
    clip = encode_clip(OUT / "p1-clip-1080p15-4mbit-120s.mp4", **CLIP)  # type: ignore[arg-type]
    data_dir = work / "vault"
    shutil.rmtree(data_dir, ignore_errors=True)
    done = subprocess.run(
        [PYTHON, "-m", "bench._ingest_file", str(clip), str(data_dir)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ingest failed: rc={done.returncode}\n{done.stderr[-4000:]}")
    return data_dir


def p90(values: list[float]) -> float:
    return float(statistics.quantiles(values, n=10)[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.p6_playback_ttfb", description=__doc__)
    parser.add_argument("--reps", type=int, help="repetitions per variant; default 200, quick 30")
    parser.add_argument("--quick", action="store_true", help="30 repetitions")
    parser.add_argument("--strict", action="store_true", help="exit 1 when above the target")
    args = parser.parse_args(argv)
    reps = args.reps or (30 if args.quick else 200)
    started = time.monotonic()

    print("P6 playback time to first byte — preparing a vault with 1-minute segments", flush=True)
    work = OUT / "work-p6"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data_dir = build_vault(work)
    ctx = open_vault(Settings(data_dir=data_dir))
    with unit_of_work(ctx.engine) as session:
        rows = list(session.exec(select(Segment).order_by(col(Segment.start))))
    if len(rows) < 1 or rows[0].media_duration < 59:
        raise SystemExit(f"expected a 60 s first segment, got {[r.media_duration for r in rows]}")
    segment = rows[0]
    plaintext = read_segment(ctx, segment)
    plain_file = work / "plain.mp4"
    plain_file.write_bytes(plaintext)
    info = describe(plain_file)
    print(
        f"  segment {segment.id}: {segment.width}x{segment.height} {segment.codec}, "
        f"{segment.media_duration:.1f} s, {segment.frames} frames, "
        f"{segment.bytes / 1e6:.1f} MB, {info['mbit_s']:.2f} Mbit/s, "
        f"{info['keyframes']} keyframes",
        flush=True,
    )
    expected_sha = hashlib.sha256(plaintext).hexdigest()
    assert expected_sha == segment.sha256

    def row() -> Segment:
        with unit_of_work(ctx.engine) as session:
            found = session.get(Segment, segment.id)
        assert found is not None
        return found

    # Each variant returns its bytes and the perf_counter() instant its first byte was ready.
    def file_first() -> tuple[bytes, float]:
        with open(plain_file, "rb") as fh:
            data = fh.read(FIRST_READ)
            return data, time.perf_counter()

    def file_whole() -> tuple[bytes, float]:
        data = plain_file.read_bytes()
        return data, time.perf_counter()

    def segment_path() -> tuple[bytes, float]:
        data = open_segment_for_playback(ctx, row())
        return data, time.perf_counter()

    def segment_rehash() -> tuple[bytes, float]:
        data = read_segment(ctx, row())
        return data, time.perf_counter()

    def clip_first(offset_s: float = 0.0) -> tuple[bytes, float]:
        window = TimeRange(segment.start + timedelta(seconds=offset_s), segment.end)
        with unit_of_work(ctx.engine) as session:
            found = segments_in_range(session, segment.camera_id, window)
        clip = open_playback_clip(ctx, found, window)
        first = next(iter(clip))
        ready = time.perf_counter()
        clip.close()  # the client went away: not part of the time to first byte
        return first, ready

    def clip_late() -> tuple[bytes, float]:
        return clip_first(55.0)

    def clip_whole() -> tuple[bytes, float]:
        window = TimeRange(segment.start, segment.end)
        with unit_of_work(ctx.engine) as session:
            found = segments_in_range(session, segment.camera_id, window)
        data = b"".join(open_playback_clip(ctx, found, window))
        return data, time.perf_counter()

    def check_segment(data: bytes) -> None:
        assert data == plaintext

    def check_clip(data: bytes) -> None:
        assert data[4:8] == b"ftyp", data[:16]

    def check_whole_clip(data: bytes) -> None:
        assert data[4:8] == b"ftyp" and len(data) > 0.9 * len(plaintext), len(data)

    def check_file_first(data: bytes) -> None:
        assert data == plaintext[:FIRST_READ]

    variants: list[tuple[str, Callable[[], tuple[bytes, float]], Callable[[bytes], None]]] = [
        ("file: first 64 KiB (anchor)", file_first, check_file_first),
        ("file: whole", file_whole, check_segment),
        ("segment", segment_path, check_segment),
        ("segment + re-hash", segment_rehash, check_segment),
        ("clip", clip_first, check_clip),
        ("clip from 55 s", clip_late, check_clip),
        ("clip, last byte", clip_whole, check_whole_clip),
    ]
    timings: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _name, run, check in variants:  # warm-up: page cache, imports, first-use costs
        check(run()[0])
    print(f"  timing {len(variants)} variants x {reps} repetitions, round-robin", flush=True)
    for _ in range(reps):
        for name, run, _check in variants:
            t0 = time.perf_counter()
            data, ready = run()
            timings[name].append((ready - t0) * 1000)
            del data
    for _name, run, check in variants:  # and once more after timing: still the right bytes
        check(run()[0])

    anchor = median(timings[variants[0][0]])
    whole = median(timings["file: whole"])
    rows_out = [["", "p50 ms", "p90 ms", "min ms", "x anchor", "x whole file"]]
    for name, _run, _check in variants:
        values = timings[name]
        rows_out.append(
            [
                name,
                f"{median(values):.2f}",
                f"{p90(values):.2f}",
                f"{min(values):.2f}",
                f"{median(values) / anchor:.0f}x",
                f"{median(values) / whole:.2f}x",
            ]
        )
    print()
    print(table(rows_out))
    seg_p50 = median(timings["segment"])
    clip_p50 = median(timings["clip"])
    worst = max(seg_p50, clip_p50, median(timings["clip from 55 s"]))
    verdict = "OK" if worst <= TARGET_MS else "ABOVE TARGET"
    print(
        f"\nP6 time to first byte, p50: segment {seg_p50:.1f} ms, clip {clip_p50:.1f} ms, "
        f"clip from 55 s {median(timings['clip from 55 s']):.1f} ms "
        f"(target <= {TARGET_MS:.0f} ms: {verdict})"
    )
    print(
        f"re-hash on the segment path would add "
        f"{median(timings['segment + re-hash']) - seg_p50:.1f} ms (p50)"
    )

    ctx.engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "name": NAME,
        "reps": reps,
        "segment": {
            "width": segment.width,
            "height": segment.height,
            "codec": segment.codec,
            "media_duration_s": segment.media_duration,
            "frames": segment.frames,
            "bytes": segment.bytes,
            "mbit_s": info["mbit_s"],
            "keyframes": info["keyframes"],
        },
        "variants": {
            name: {
                "p50_ms": round(median(values), 3),
                "p90_ms": round(p90(values), 3),
                "min_ms": round(min(values), 3),
                "raw_ms": [round(v, 3) for v in values],
            }
            for name, values in timings.items()
        },
        "target_ms": TARGET_MS,
        "meets_target": worst <= TARGET_MS,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
    }
    path = write_result(NAME, result)
    print(f"\nwrote {path.relative_to(OUT.parent.parent)} in {result['elapsed_s']:.0f} s")
    return 1 if args.strict and worst > TARGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())
