"""P5 — purge throughput: ours against a naive one-object-at-a-time loop (DESIGN §11).

Both contenders start from identical, freshly generated vaults (same catalog backend, same
store): ``--segments`` due segments (default 100,000) over ``--cameras`` cameras, each with a
small sealed-size object and a thumbnail, retention ended a month ago, no holds.

* ours: :func:`vault.purge.run_purge` — batches of 1000: mark ``purging`` (commit), batched
  ``delete_many`` of segments then thumbnails, ``present`` of every key (the store's batched
  HEAD), wrapped keys nulled, tombstones, one ledger event per batch (commit), then the signed
  certificate;
* naive: the cleanup loop of common open-source NVRs — select what expired, then for each
  segment delete its object, delete its thumbnail, delete its row, one transaction each. It
  writes no tombstone, no ledger, no certificate and verifies nothing;
* floor (filesystem only): unlink every file the store keeps for those segments (the segment
  object and the thumbnail object; each carries its lock in an extended attribute), one after
  another, nothing else — what the disk costs serially (``--no-floor`` skips it). Ours overlaps
  its unlinks on threads, so it can beat this floor on a disk where unlinks wait.

Each contender runs in a fresh child process (``python -m bench.p5_purge --child ...``) that
opens the vault from its settings and times only the purge; the parent also records the
child's CPU (``os.wait4``). Every run is verified: ours leaves every row ``purged`` with a
verified tombstone and a certificate that verifies against tombstones and ledger
(``verify_run``), and the store empty under ``segments/`` and ``thumbs/``; naive leaves no
row and no object. Then the same on S3 (moto's server in its own process) with
``--s3-segments`` (default 300: moto answers a listing in time that grows with the bucket;
the naive loop lists each key's versions before and after its delete, ours one listing per
camera-day directory) over ``--s3-cameras`` (default 4, so that a directory holds ~75 keys,
as a purge batch's directories do). The filesystem setup
writes the store's files directly (same layout, no fsync); S3 objects are put through the
store.

Targets: ours >= 10x naive and >= 5,000 segments/s on the filesystem store. ``--strict`` exits
1 when one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench._common import (
    OUT,
    PYTHON,
    child_env,
    last_json_line,
    machine,
    run_measured,
    table,
    write_result,
)

NAME = "p5_purge"
TARGET_RATIO = 10.0
TARGET_RATE = 5000.0
OBJECT = os.urandom(2048)  # a small sealed-size segment object
THUMB = os.urandom(512)
ACCESS_KEY = SECRET_KEY = "bench-p5"


@dataclass(frozen=True)
class Backend:
    store: str  # fs | s3
    database_url: str | None  # None: SQLite under the data dir
    s3_endpoint: str = ""
    bucket: str = ""

    def env(self, data: Path) -> dict[str, str]:
        env = child_env()
        env["CCTV_DATA_DIR"] = str(data)
        env["CCTV_STORE"] = self.store
        if self.database_url:
            env["CCTV_DATABASE_URL"] = self.database_url
        if self.store == "s3":
            env.update(
                CCTV_S3_ENDPOINT=self.s3_endpoint,
                CCTV_S3_SECURE="false",
                CCTV_S3_BUCKET=self.bucket,
                CCTV_S3_ACCESS_KEY=ACCESS_KEY,
                CCTV_S3_SECRET_KEY=SECRET_KEY,
            )
        return env


# -- the children ------------------------------------------------------------------------------


def child(contender: str) -> None:
    from sqlalchemy import delete
    from sqlmodel import Session, col, select

    from cctv_vault.runtime import open_vault
    from vault.models import Segment, SegmentState
    from vault.purge import run_purge
    from vault.settings import Settings
    from vault.signing import SigningKey

    settings = Settings()
    ctx = open_vault(settings)
    key = SigningKey.load_or_create(settings.resolved_ledger_key_file)
    started = time.perf_counter()
    if contender == "ours":
        report = run_purge(ctx, signing_key=key, trigger="bench")
        purged, run_id = report.purged, report.run_id
    elif contender == "floor":
        purged, run_id = _floor(settings.store_root), None
    else:
        now = datetime.now(UTC)
        with Session(ctx.engine) as session:
            due = session.exec(
                select(col(Segment.id), col(Segment.object_key), col(Segment.thumb_key))
                .where(col(Segment.state) == SegmentState.STORED)
                .where(col(Segment.retention_until) <= now)
            ).all()
        purged, run_id = 0, None
        for segment_id, object_key, thumb_key in due:
            ctx.store.delete_many([object_key])
            if thumb_key:
                ctx.store.delete_many([thumb_key])
            with ctx.engine.begin() as conn:
                conn.execute(delete(Segment).where(col(Segment.id) == segment_id))
            purged += 1
    wall = time.perf_counter() - started
    sys.stdout.write(json.dumps({"purged": purged, "wall_s": wall, "run_id": run_id}) + "\n")


def _floor(root: Path) -> int:
    """The disk's part alone: unlink every file the filesystem store keeps for the due
    segments (segment object and thumbnail object), one after another. No catalog, no lock,
    no lock check, no directory fsync: no serial purge through this store can go faster."""
    segments = 0
    for top in ("objects/segments", "objects/thumbs"):
        for directory, _dirs, files in os.walk(root / top):
            for name in files:
                os.unlink(os.path.join(directory, name))
                segments += top.endswith("segments")
    return segments


# -- setup -------------------------------------------------------------------------------------


def populate(data: Path, backend: Backend, segments: int, cameras: int) -> None:
    """A migrated vault with ``segments`` due segments (and thumbnails) over ``cameras``."""
    from sqlalchemy import insert

    from cctv_vault.runtime import open_vault
    from vault.lifecycle import object_key
    from vault.models import Camera, RetentionPolicy, Segment, Site
    from vault.settings import Settings
    from vault.store.fs import LOCK_ATTRIBUTE

    os.environ.update(backend.env(data))  # Settings() reads the same as the child
    try:
        ctx = open_vault(Settings())
    finally:
        for name in [k for k in os.environ if k.startswith("CCTV_")]:
            del os.environ[name]
    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(days=125)
    with ctx.engine.begin() as conn:
        conn.execute(insert(Site.__table__), [  # type: ignore[attr-defined]
            {"id": "dc-1", "name": "DC 1", "timezone": "Asia/Tokyo"}
        ])
        conn.execute(insert(RetentionPolicy.__table__), [  # type: ignore[attr-defined]
            {"id": "pci", "days": 90, "min_days": 90, "max_days": 365, "basis": "PCI DSS"}
        ])
        conn.execute(insert(Camera.__table__), [  # type: ignore[attr-defined]
            {"id": f"cam-{c:03d}", "site_id": "dc-1", "name": f"cam {c}", "location": "",
             "source_ref": "bench", "purpose": "security", "retention_policy_id": "pci",
             "enabled": True}
            for c in range(cameras)
        ])
    rows: list[dict[str, Any]] = []
    fs_root = data / "store"
    made: set[Path] = set()

    pending: list[tuple[Path, bytes, bytes]] = []

    def write(path: Path, payload: bytes, lock: bytes) -> None:
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        pending.append((path, payload, lock))

    def write_object(item: tuple[Path, bytes, bytes]) -> None:
        path, payload, lock = item
        path.write_bytes(payload)
        os.setxattr(path, LOCK_ATTRIBUTE, lock)

    def flush_files() -> None:
        # File creation is slow on this kind of VM disk; threads overlap it (setup only).
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write_object, pending, chunksize=256))
        pending.clear()

    for n in range(segments):
        camera = f"cam-{n % cameras:03d}"
        start = first + timedelta(minutes=n // cameras)
        end = start + timedelta(minutes=1)
        segment_id = str(uuid.uuid4())
        key = object_key("segments", "dc-1", camera, start, segment_id)
        thumb = object_key("thumbs", "dc-1", camera, start, segment_id)
        retention_until = end + timedelta(days=90)
        rows.append({
            "id": segment_id, "camera_id": camera, "run_id": f"run-{camera}", "start": start,
            "end": end, "media_duration": 60.0, "frames": 900, "codec": "h264", "width": 1280,
            "height": 720, "bytes": len(OBJECT), "sha256": os.urandom(32).hex(),
            "object_key": key, "key_id": "bench", "wrapped_dek": os.urandom(40),
            "thumb_key": thumb, "thumb_sha256": os.urandom(32).hex(),
            "thumb_wrapped_dek": os.urandom(40), "purpose": "security",
            "retention_until": retention_until, "state": "stored", "created_at": end,
            "purged_at": None,
        })
        if backend.store == "fs":
            lock = json.dumps({"legal_hold": False, "metadata": {"kind": "native"},
                               "retain_until": retention_until.isoformat()},
                              separators=(",", ":")).encode()
            for k, payload in ((key, OBJECT), (thumb, THUMB)):
                write(fs_root / "objects" / k, payload, lock)
        else:
            ctx.store.put(key, OBJECT, {"kind": "native"})
            ctx.store.put(thumb, THUMB, {"kind": "derived-thumbnail"})
        if len(rows) == 10_000 or n == segments - 1:
            flush_files()
            with ctx.engine.begin() as conn:
                conn.execute(insert(Segment.__table__), rows)  # type: ignore[attr-defined]
            rows = []
    ctx.engine.dispose()


def verify(data: Path, backend: Backend, contender: str, expected: int, run_id: str | None
           ) -> None:
    """Fail the benchmark if the contender did not do the whole job."""
    from sqlmodel import Session, col, func, select

    from cctv_vault.runtime import open_vault
    from vault.models import Segment, Tombstone
    from vault.purge import verify_run
    from vault.settings import Settings
    from vault.signing import SigningKey

    os.environ.update(backend.env(data))
    try:
        settings = Settings()
        ctx = open_vault(settings)
    finally:
        for name in [k for k in os.environ if k.startswith("CCTV_")]:
            del os.environ[name]
    left = [k for prefix in ("segments/", "thumbs/") for k in ctx.store.list(prefix)]
    if left:
        raise SystemExit(f"{contender}: {len(left)} objects left in the store")
    with Session(ctx.engine) as session:
        rows = session.exec(select(func.count()).select_from(Segment)).one()
        stones = session.exec(select(func.count()).select_from(Tombstone)).one()
        purged = session.exec(
            select(func.count()).select_from(Segment).where(col(Segment.state) == "purged")
        ).one()
    if contender == "floor":
        pass  # no catalog work: only the files (checked above)
    elif contender == "naive":
        if rows != 0:
            raise SystemExit(f"naive: {rows} rows left")
    else:
        if not (rows == purged == stones == expected):
            raise SystemExit(f"ours: rows={rows} purged={purged} tombstones={stones}")
        assert run_id is not None
        key = SigningKey.load_or_create(settings.resolved_ledger_key_file)
        verdict = verify_run(ctx, run_id, [key.public])
        if not verdict.ok:
            raise SystemExit(f"ours: run does not verify: {verdict.problems[:3]}")
    ctx.engine.dispose()


# -- S3 peer -----------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in its own process (not in ours: it would share our GIL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(PYTHON).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("moto_server did not start") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# -- main --------------------------------------------------------------------------------------


def one(
    contender: str, backend: Backend, segments: int, cameras: int,
    store_parent: Path | None = None,
) -> dict[str, Any]:
    work = OUT / f"work-p5-{contender}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    elsewhere = store_parent / work.name if store_parent and backend.store == "fs" else None
    try:
        if elsewhere is not None:
            # The store on another filesystem (e.g. tmpfs), the catalog where it always is.
            elsewhere.mkdir(parents=True)
            (work / "data").mkdir()
            (work / "data" / "store").symlink_to(elsewhere)
        if backend.store == "s3":
            backend = Backend("s3", backend.database_url, backend.s3_endpoint,
                              f"p5-{uuid.uuid4().hex[:12]}")
        print(f"  {backend.store}: generating {segments:,} due segments for {contender} ...",
              flush=True)
        began = time.monotonic()
        populate(work / "data", backend, segments, cameras)
        os.sync()
        print(f"  {backend.store}: generated in {time.monotonic() - began:.0f} s; purging",
              flush=True)
        measured = run_measured(
            [PYTHON, "-m", "bench.p5_purge", "--child", contender], work,
            env=backend.env(work / "data"),
        )
        if measured.returncode != 0:
            raise SystemExit(f"{contender} child failed:\n{measured.stderr[-3000:]}")
        result = last_json_line(measured.stdout)
        if result["purged"] != segments:
            raise SystemExit(f"{contender}: purged {result['purged']} of {segments}")
        verify(work / "data", backend, contender, segments, result.get("run_id"))
        rate = segments / result["wall_s"]
        print(f"  {backend.store}: {contender:5} {segments:,} segments in {result['wall_s']:.1f} s"
              f" = {rate:,.0f}/s (child CPU {measured.cpu_s:.1f} s)", flush=True)
        return {"segments": segments, "wall_s": result["wall_s"], "rate": rate,
                "child_cpu_s": measured.cpu_s, "child_wall_s": measured.wall_s}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if elsewhere is not None:
            shutil.rmtree(elsewhere, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p5_purge", description=__doc__)
    parser.add_argument("--segments", type=int, default=100_000, help="0 skips the filesystem")
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--s3-segments", type=int, default=300, help="0 skips S3")
    parser.add_argument("--s3-cameras", type=int, default=4,
                        help="cameras of the S3 run (default 4: ~75 keys per camera-day "
                             "directory, above the 32 from which delete_many lists a directory "
                             "once instead of per key, as a real purge batch's keys are)")
    parser.add_argument("--store-parent", type=Path,
                        help="put the filesystem store under this directory (e.g. /dev/shm)"
                             " instead of the data dir; the catalog stays in the data dir")
    parser.add_argument("--database-url", default=os.environ.get("CCTV_BENCH_PURGE_DATABASE_URL"),
                        help="catalog URL (default: SQLite in the data dir)")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--no-floor", action="store_true", help="skip the unlink-only floor")
    parser.add_argument("--child", choices=["ours", "naive", "floor"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    results: dict[str, dict[str, Any]] = {}
    if args.segments:
        fs = Backend("fs", args.database_url)
        contenders = ("ours", "naive") if args.no_floor else ("ours", "naive", "floor")
        results["fs"] = {
            c: one(c, fs, args.segments, args.cameras, args.store_parent) for c in contenders
        }
    if args.s3_segments:
        with moto_server() as endpoint:
            s3 = Backend("s3", args.database_url, endpoint)
            results["s3 (moto)"] = {
                c: one(c, s3, args.s3_segments, min(args.s3_cameras, args.s3_segments))
                for c in ("ours", "naive")
            }
    rows = [["store", "segments", "ours /s", "naive /s", "ratio", "floor /s (unlink only)"]]
    for store, r in results.items():
        r["ratio"] = r["ours"]["rate"] / r["naive"]["rate"]
        floor = f"{r['floor']['rate']:,.0f}" if "floor" in r else "-"
        rows.append([store, f"{r['ours']['segments']:,}", f"{r['ours']['rate']:,.0f}",
                     f"{r['naive']['rate']:,.0f}", f"{r['ratio']:.1f}x", floor])
    catalog = "PostgreSQL" if args.database_url else "SQLite"
    where = f", filesystem store under {args.store_parent}" if args.store_parent else ""
    print(f"\nP5 purge throughput ({catalog} catalog{where}, {args.cameras} cameras on the "
          f"filesystem, {args.s3_cameras} on S3, one run):")
    print(table(rows))
    met = True
    if "fs" in results:
        fs_ours, ratio = results["fs"]["ours"]["rate"], results["fs"]["ratio"]
        met = fs_ours >= TARGET_RATE and ratio >= TARGET_RATIO
        print(f"target: ours >= {TARGET_RATIO:.0f}x naive and >= {TARGET_RATE:,.0f} segments/s"
              f" on the filesystem store: {'met' if met else 'MISSED'}"
              f" ({ratio:.1f}x, {fs_ours:,.0f}/s)")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    name = NAME if not args.store_parent else f"{NAME}-store-elsewhere"
    path = write_result(name, {"args": settings, "results": results, "machine": machine(),
                               "targets": {"ratio": TARGET_RATIO, "rate": TARGET_RATE}})
    print(f"result: {path}")
    if args.strict and not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
