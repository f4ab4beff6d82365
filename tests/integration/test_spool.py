"""The spool: bound with drops recorded as gap + audit event, and crash recovery of open files."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
from sqlmodel import select

from ingest.fmp4 import FragmentWriter, summarize
from ingest.recorder import Committer, HealthBoard
from ingest.simulate import render_clip
from ingest.spool import Spool
from tests.integration.test_lifecycle import CONFIG
from vault import ledger
from vault.catalog import sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import make_engine, migrate, unit_of_work
from vault.lifecycle import VaultContext
from vault.models import AuditEvent, Gap, Segment
from vault.pending import PendingSegment
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def _closed(spool: Path, start: datetime, size: int) -> PendingSegment:
    pending = PendingSegment(
        segment_id=str(uuid.uuid4()), camera_id="cam-a", run_id="run-1", run_started_at=T0,
        restamped=False, start=start, state="closed", end=start + timedelta(seconds=60),
        media_duration=60.0, frames=900, codec="h264", width=640, height=360,
    )
    pending.media_path(spool).write_bytes(b"\0" * size)
    pending.save(spool)
    return pending


def test_full_spool_drops_oldest_with_gap_and_audit_event(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    oldest = _closed(spool.root, T0, 400)
    middle = _closed(spool.root, T0 + timedelta(minutes=1), 400)
    newest = _closed(spool.root, T0 + timedelta(minutes=2), 400)
    assert spool.over_warning()

    dropped = spool.enforce_bound()
    assert [d.segment_id for d in dropped] == [oldest.segment_id]
    assert {m.segment_id for m in spool.closed()} == {middle.segment_id, newest.segment_id}
    assert not oldest.media_path(spool.root).exists()

    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    ctx = VaultContext(
        engine=engine, store=FilesystemStore(tmp_path / "store"),
        keys=LocalKeyProvider(tmp_path / "kek"), clock=FixedClock(T0),
    )
    committer = Committer(ctx, spool, HealthBoard(ctx.clock))
    assert committer.drain() == 2
    with unit_of_work(engine) as session:
        gap_rows = list(session.exec(select(Gap)))
        events = list(session.exec(select(AuditEvent)))
        assert ledger.verify_chain(session) is None
        assert len(list(session.exec(select(Segment)))) == 2
    assert [(g.start, g.end, g.reason) for g in gap_rows] == [
        (oldest.start, oldest.end, "spool full: footage dropped before commit")
    ]
    # The config sync before it is in the ledger too (camera.added); the drop is the only
    # footage event.
    footage = [e for e in events if e.action.startswith("footage.")]
    assert [e.action for e in footage] == ["footage.dropped"]
    assert oldest.segment_id in footage[0].details


def test_recovery_keeps_whole_fragments_of_an_open_segment(tmp_path: Path) -> None:
    clip = render_clip(tmp_path / "clip.mkv", camera_name="r", width=320, height=180, fps=10,
                       seconds=6, gop_seconds=1.0)
    spool = Spool(tmp_path / "spool", max_bytes=10**9)
    pending = PendingSegment(
        segment_id=str(uuid.uuid4()), camera_id="cam-a", run_id="run-1", run_started_at=T0,
        restamped=False, start=T0,
    )
    pending.save(spool.root)
    with av.open(str(clip)) as inp:
        stream = inp.streams.video[0]
        writer = FragmentWriter(pending.media_path(spool.root), stream)
        base = None
        for pkt in inp.demux(stream):
            if pkt.dts is None:
                continue
            base = pkt.dts if base is None else base
            writer.write(pkt, pkt.pts - base, pkt.dts - base)
        writer.close()
    full = summarize(pending.media_path(spool.root))
    # The crash: the file is cut in the middle of a fragment.
    media = pending.media_path(spool.root)
    data = media.read_bytes()
    media.write_bytes(data[: int(len(data) * 0.7)])

    [recovered] = spool.recover()
    [closed] = spool.closed()
    assert closed.segment_id == pending.segment_id
    assert 0 < closed.media_duration < full.media_duration
    assert closed.frames % 10 == 0, "whole one-second fragments only"
    assert closed.end == T0 + timedelta(seconds=closed.media_duration)
    assert recovered.camera_id == "cam-a"
    assert recovered.gap.start == closed.end
    assert "crash" in recovered.gap.reason
    assert summarize(media).frames == closed.frames


def test_second_process_cannot_take_the_spool(tmp_path: Path) -> None:
    import pytest

    from vault.errors import ConfigError

    first = Spool(tmp_path / "spool", max_bytes=10**6)
    first.acquire()
    try:
        with pytest.raises(ConfigError, match="in use"):
            Spool(tmp_path / "spool", max_bytes=10**6).acquire()
    finally:
        first.release()


def test_a_segment_that_cannot_commit_is_quarantined_not_blocking(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=10**9)
    broken = _closed(spool.root, T0, 100)
    broken.media_path(spool.root).unlink()  # its footage file is gone
    healthy = _closed(spool.root, T0 + timedelta(minutes=1), 100)

    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    ctx = VaultContext(
        engine=engine, store=FilesystemStore(tmp_path / "store"),
        keys=LocalKeyProvider(tmp_path / "kek"), clock=FixedClock(T0),
    )
    health = HealthBoard(ctx.clock)
    assert Committer(ctx, spool, health).drain() == 1  # the healthy one is not held back

    with unit_of_work(engine) as session:
        assert [s.id for s in session.exec(select(Segment))] == [healthy.segment_id]
        [gap] = list(session.exec(select(Gap)))
        [event] = [
            e for e in session.exec(select(AuditEvent)) if e.action.startswith("footage.")
        ]
    assert "quarantined" in gap.reason and "FileNotFoundError" in gap.reason
    assert event.action == "footage.quarantined"
    assert (spool.root / "quarantine" / f"{broken.segment_id}.json").exists()
    assert spool.closed() == []
    assert health.get("cam-a") == ("degraded", "a segment was quarantined")
