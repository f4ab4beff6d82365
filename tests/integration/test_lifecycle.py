"""Commit protocol, reading back, tampering and ``check`` — on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio import Minio
from sqlalchemy.engine import Engine
from sqlmodel import select

from tests.support.configs import SITE_AND_POLICY
from vault import ledger
from vault.catalog import gaps_in_range, segments_in_range, sync_config
from vault.check import run_check
from vault.config import parse_config
from vault.crypto import LocalKeyProvider, Seal, associated_data, seal_blob
from vault.db import unit_of_work
from vault.errors import IntegrityError, Unavailable
from vault.lifecycle import VaultContext, commit_gap, commit_segment, read_segment
from vault.models import AuditEvent, Segment
from vault.pending import PendingGap, PendingSegment
from vault.store.fs import FilesystemStore
from vault.store.s3 import S3Store
from vault.timerange import FixedClock, TimeRange

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)

CONFIG = SITE_AND_POLICY + """
[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }
"""

# Enough MP4-like structure that a plaintext leak would show (box names, codec strings).
MEDIA = b"\x00\x00\x00\x18ftypisom" + b"moof mdat avc1 " * 4000 + os.urandom(4096)


@pytest.fixture
def ctx(engine: Engine, tmp_path: Path, keys: LocalKeyProvider) -> VaultContext:
    store = FilesystemStore(tmp_path / "store")
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {"cam-a": "rtsp://10.0.0.5/stream1"})
    return VaultContext(engine=engine, store=store, keys=keys, clock=FixedClock(T0))


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def closed_segment(spool: Path, start: datetime = T0, media: bytes = MEDIA) -> PendingSegment:
    pending = PendingSegment(
        segment_id=str(uuid.uuid4()),
        camera_id="cam-a",
        run_id=str(uuid.uuid4()),
        run_started_at=start,
        restamped=False,
        start=start,
        state="closed",
        end=start + timedelta(seconds=60),
        media_duration=60.0,
        frames=900,
        codec="h264",
        width=640,
        height=360,
    )
    pending.media_path(spool).write_bytes(media)
    pending.thumb_path(spool).write_bytes(b"\xff\xd8thumb\xff\xd9")
    pending.save(spool)
    return pending


def test_commit_stores_sealed_tagged_object_and_row(ctx: VaultContext, spool: Path) -> None:
    pending = closed_segment(spool)
    segment = commit_segment(ctx, pending, spool)

    assert segment.sha256 == hashlib.sha256(MEDIA).hexdigest()
    assert segment.purpose == "security"
    assert segment.retention_until == pending.end + timedelta(days=90)  # type: ignore[operator]
    assert segment.object_key == f"segments/tokyo-1/cam-a/2026/11/29/{pending.segment_id}"
    info = ctx.store.head(segment.object_key)
    assert info is not None
    assert info.metadata["purpose"] == "security"
    assert info.metadata["sha256"] == segment.sha256
    assert info.retain_until == segment.retention_until
    blob = ctx.store.get(segment.object_key)
    for marker in (b"ftyp", b"moof", b"mdat", b"avc1"):
        assert marker not in blob
    assert read_segment(ctx, segment) == MEDIA
    assert list(spool.iterdir()) == []
    with unit_of_work(ctx.engine) as session:
        rows = segments_in_range(session, "cam-a", TimeRange(T0, T0 + timedelta(minutes=1)))
    assert [r.id for r in rows] == [pending.segment_id]


def test_commit_retried_after_crash_before_row_writes_same_object(
    ctx: VaultContext, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = closed_segment(spool)
    import vault.lifecycle as lifecycle

    real_uow = lifecycle.unit_of_work
    calls = {"n": 0}

    def failing_second_uow(engine: Engine):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the insert transaction: the catalog goes away after the put
            raise Unavailable("catalog unavailable: simulated")
        return real_uow(engine)

    monkeypatch.setattr(lifecycle, "unit_of_work", failing_second_uow)
    with pytest.raises(Unavailable):
        commit_segment(ctx, pending, spool)
    key = f"segments/tokyo-1/cam-a/2026/11/29/{pending.segment_id}"
    first_blob = ctx.store.get(key)
    monkeypatch.setattr(lifecycle, "unit_of_work", real_uow)

    # Recovery reads the manifest back (now carrying the seal) and commits again.
    again = PendingSegment.from_json(pending.manifest_path(spool).read_bytes())
    assert again.seal is not None
    segment = commit_segment(ctx, again, spool)
    assert ctx.store.get(key) == first_blob
    assert read_segment(ctx, segment) == MEDIA
    with unit_of_work(ctx.engine) as session:
        assert len(list(session.exec(select(Segment)))) == 1
    assert run_check(ctx).ok


def test_commit_after_row_exists_only_cleans_the_spool(ctx: VaultContext, spool: Path) -> None:
    pending = closed_segment(spool)
    commit_segment(ctx, pending, spool)
    # A crash after the insert but before the spool cleanup: the files are back.
    pending.media_path(spool).write_bytes(MEDIA)
    pending.save(spool)
    commit_segment(ctx, pending, spool)
    assert list(spool.iterdir()) == []
    with unit_of_work(ctx.engine) as session:
        assert len(list(session.exec(select(Segment)))) == 1


def test_flipped_byte_fails_read_and_check(ctx: VaultContext, spool: Path, tmp_path: Path) -> None:
    segment = commit_segment(ctx, closed_segment(spool), spool)
    path = tmp_path / "store" / "objects" / segment.object_key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        read_segment(ctx, segment)
    report = run_check(ctx)
    assert not report.ok
    assert [(v.kind, v.target) for v in report.violations] == [("integrity", segment.object_key)]
    assert run_check(ctx, quick=True).ok  # quick skips decryption by design


def test_check_reports_missing_and_orphan_objects(ctx: VaultContext, spool: Path) -> None:
    kept = commit_segment(ctx, closed_segment(spool), spool)
    gone = commit_segment(ctx, closed_segment(spool, T0 + timedelta(minutes=1)), spool)
    (Path(ctx.store.root) / "objects" / gone.object_key).unlink()  # type: ignore[attr-defined]
    ctx.store.put("segments/tokyo-1/cam-a/2026/11/29/stray", b"x", {})
    pending_id = str(uuid.uuid4())
    ctx.store.put(f"segments/tokyo-1/cam-a/2026/11/29/{pending_id}", b"y", {})

    report = run_check(ctx, pending_ids={pending_id})
    kinds = sorted((v.kind, v.target.rsplit("/", 1)[-1]) for v in report.violations)
    assert kinds == [("missing-object", gone.id), ("orphan-object", "stray")]
    assert report.pending == [f"segments/tokyo-1/cam-a/2026/11/29/{pending_id}"]
    assert kept.id not in {v.target.rsplit("/", 1)[-1] for v in report.violations}


def test_gap_with_drop_event_is_recorded_once_and_chained(ctx: VaultContext, spool: Path) -> None:
    gap = PendingGap(
        gap_id=str(uuid.uuid4()),
        camera_id="cam-a",
        start=T0,
        end=T0 + timedelta(seconds=60),
        reason="spool full: footage dropped before commit",
        audit_action="footage.dropped",
        audit_details={"segment_id": "s1", "bytes": 123},
    )
    gap.save(spool)
    commit_gap(ctx, gap, spool)
    gap.save(spool)  # crash before the spool file went: committing again changes nothing
    commit_gap(ctx, gap, spool)
    with unit_of_work(ctx.engine) as session:
        gaps = gaps_in_range(session, "cam-a", TimeRange(T0, T0 + timedelta(hours=1)))
        events = list(
            session.exec(select(AuditEvent).where(AuditEvent.action == "footage.dropped"))
        )
        assert ledger.verify_chain(session) is None
    assert [(g.start, g.end) for g in gaps] == [(T0, T0 + timedelta(seconds=60))]
    assert [(e.action, e.target, e.decision) for e in events] == [
        ("footage.dropped", "camera:cam-a", "done")
    ]
    assert list(spool.iterdir()) == []


def test_ledger_verify_names_first_altered_event(ctx: VaultContext) -> None:
    with unit_of_work(ctx.engine) as session:
        for i in range(5):
            ledger.append(session, at=T0, actor="system", role="system", action=f"a{i}",
                          target="t", decision="done")
    with unit_of_work(ctx.engine) as session:
        ev = session.get(AuditEvent, 3)
        assert ev is not None
        ev.reason = "rewritten"
        session.add(ev)
    with unit_of_work(ctx.engine) as session:
        assert ledger.verify_chain(session) == 3


def test_segment_range_query_is_half_open(ctx: VaultContext, spool: Path) -> None:
    a = commit_segment(ctx, closed_segment(spool, T0), spool)
    b = commit_segment(ctx, closed_segment(spool, T0 + timedelta(seconds=60)), spool)
    with unit_of_work(ctx.engine) as session:
        at_boundary = segments_in_range(
            session, "cam-a", TimeRange(T0 + timedelta(seconds=60), T0 + timedelta(seconds=61))
        )
        before = segments_in_range(session, "cam-a", TimeRange(T0 - timedelta(hours=1), T0))
        both = segments_in_range(session, "cam-a", TimeRange(T0, T0 + timedelta(minutes=2)))
    assert [s.id for s in at_boundary] == [b.id]
    assert before == []
    assert [s.id for s in both] == [a.id, b.id]



# -- streamed commit ----------------------------------------------------------------------------


def _whole_buffer_blob(ctx: VaultContext, segment: Segment, media: bytes, blob: bytes) -> bytes:
    """The blob the whole-buffer seal makes with the segment's seal (its nonce is in the
    header): a streamed commit must have written exactly these bytes."""
    seal = Seal(key_id=segment.key_id, wrapped_dek=segment.wrapped_dek or b"", nonce=blob[4:16])
    aad = associated_data(segment.id, segment.camera_id, segment.start.isoformat(), segment.sha256)
    return bytes(seal_blob(media, seal, aad, ctx.keys))


def test_commit_of_a_large_segment_never_holds_it_in_memory(
    ctx: VaultContext, spool: Path
) -> None:
    media = os.urandom(48 << 20)
    pending = closed_segment(spool, media=media)

    tracemalloc.start()
    try:
        segment = commit_segment(ctx, pending, spool)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Two 1 MiB buffers (hash pass, sealing pass) and the store's own: nowhere near 48 MiB.
    assert peak < 8 << 20, f"commit peaked at {peak / (1 << 20):.1f} MiB"
    assert (segment.bytes, segment.sha256) == (len(media), hashlib.sha256(media).hexdigest())
    blob = ctx.store.get(segment.object_key)
    assert blob == _whole_buffer_blob(ctx, segment, media, blob)
    assert read_segment(ctx, segment) == media
    assert run_check(ctx).ok


class _SpoolFileCrash(BaseException):
    """Not an Exception, like SIGKILL: nothing in the commit gets to handle it."""


def test_crash_while_streaming_the_object_leaves_nothing_and_the_retry_commits(
    ctx: VaultContext, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media = os.urandom(5 << 20)
    pending = closed_segment(spool, media=media)
    import vault.lifecycle as lifecycle

    class CrashingReader(lifecycle.SealingReader):
        handed_out = 0

        def readinto(self, buffer: memoryview | bytearray) -> int:
            if CrashingReader.handed_out > 2 << 20:  # mid-object, after the manifest's seal
                raise _SpoolFileCrash
            count = super().readinto(buffer)
            CrashingReader.handed_out += count
            return count

    monkeypatch.setattr(lifecycle, "SealingReader", CrashingReader)
    with pytest.raises(_SpoolFileCrash):
        commit_segment(ctx, pending, spool)
    monkeypatch.undo()

    key = f"segments/tokyo-1/cam-a/2026/11/29/{pending.segment_id}"
    assert ctx.store.head(key) is None  # a half-written object never becomes visible
    again = PendingSegment.from_json(pending.manifest_path(spool).read_bytes())
    assert again.seal is not None  # drawn and saved before the first byte was put
    segment = commit_segment(ctx, again, spool)
    blob = ctx.store.get(key)
    assert blob[4:16] == again.seal.nonce and segment.wrapped_dek == again.seal.wrapped_dek
    assert blob == _whole_buffer_blob(ctx, segment, media, blob)
    assert list(spool.iterdir()) == []
    assert run_check(ctx).ok


def _append_late_bytes(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"late bytes")


def _flip_first_byte(path: Path) -> None:
    with path.open("r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))


@pytest.mark.parametrize(("tamper", "refusal"), [
    # Longer: the seal pass reads more than was hashed.
    (_append_late_bytes, "longer than when it was hashed"),
    # Same length, other bytes: the length cannot show it; the file's version (inode, size,
    # mtime, ctime), checked before the GCM tag, does.
    (_flip_first_byte, "changed while it was sealed"),
])
def test_spool_file_that_changed_after_hashing_is_refused(
    ctx: VaultContext, spool: Path, monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[Path], None], refusal: str,
) -> None:
    # The two passes must see the same bytes; if they do not, no object is completed and no
    # row names a hash its object's plaintext does not have (I6).
    pending = closed_segment(spool)
    media_path = pending.media_path(spool)
    closed_at = time.time_ns() - 10 * 1_000_000_000  # as a recorder closed it, seconds ago
    os.utime(media_path, ns=(closed_at, closed_at))
    import vault.lifecycle as lifecycle

    real_hash = lifecycle.sha256_file

    def hash_then_tamper(path: Path) -> tuple[str, int]:
        digest = real_hash(path)
        tamper(path)
        return digest

    monkeypatch.setattr(lifecycle, "sha256_file", hash_then_tamper)
    with pytest.raises(IntegrityError, match=refusal):
        commit_segment(ctx, pending, spool)
    assert ctx.store.head(f"segments/tokyo-1/cam-a/2026/11/29/{pending.segment_id}") is None
    with unit_of_work(ctx.engine) as session:
        assert list(session.exec(select(Segment))) == []


@pytest.mark.s3
def test_commit_streams_to_s3_in_parts(
    engine: Engine, keys: LocalKeyProvider, s3_client: Minio, spool: Path
) -> None:
    store = S3Store(s3_client, f"test-{uuid.uuid4().hex[:24]}", stream_part_size=5 << 20)
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {"cam-a": "rtsp://10.0.0.5/stream1"})
    s3_ctx = VaultContext(engine=engine, store=store, keys=keys, clock=FixedClock(T0))
    media = os.urandom(11 << 20)

    segment = commit_segment(s3_ctx, closed_segment(spool, media=media), spool)

    info = store.head(segment.object_key)
    assert info is not None
    assert info.retain_until == segment.retention_until
    assert info.metadata["sha256"] == hashlib.sha256(media).hexdigest()
    blob = store.get(segment.object_key)
    assert blob == _whole_buffer_blob(s3_ctx, segment, media, blob)
    assert run_check(s3_ctx).ok
