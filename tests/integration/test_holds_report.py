"""The retention report on SQLite and PostgreSQL: oldest and newest footage, overdue footage
(past its deadline and not held), held footage and the holds that keep it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.integration.test_holds import CONFIG, REASON, M, commit
from tests.integration.test_lifecycle import T0
from vault.catalog import sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.holds import place_hold, release_hold
from vault.lifecycle import VaultContext
from vault.models import PurgeRun, Segment, SegmentState
from vault.report import RetentionReport, retention_report
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock

DAY = timedelta(days=1)


@pytest.fixture
def ctx(engine: Engine, tmp_path: Path, keys: LocalKeyProvider) -> VaultContext:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    store = FilesystemStore(tmp_path / "store")
    ctx = VaultContext(engine=engine, store=store, keys=keys, clock=FixedClock(T0))
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(4):  # cam-a: [T0 + i min, +1 min), deadlines end + 90 days
        commit(ctx, spool, T0 + i * M)
    commit(ctx, spool, T0 + 10 * M, "cam-b")
    return ctx


def report_at(ctx: VaultContext, days: float) -> dict[str, dict[str, object]]:
    with unit_of_work(ctx.engine) as session:
        report = retention_report(session, T0 + timedelta(days=days))
    return {c.camera_id: c.to_dict() for c in report.cameras}


def test_report_before_any_deadline(ctx: VaultContext) -> None:
    cams = report_at(ctx, 1)
    a = cams["cam-a"]
    assert (a["stored_segments"], a["overdue_segments"], a["held_segments"]) == (4, 0, 0)
    assert a["oldest_start"] == T0.isoformat() and a["newest_end"] == (T0 + 4 * M).isoformat()
    assert a["policy"] == "pci" and a["days"] == 90
    assert cams["cam-b"]["stored_segments"] == 1


def test_overdue_excludes_held_footage_and_names_the_holds(ctx: VaultContext) -> None:
    assert isinstance(ctx.clock, FixedClock)
    ctx.clock.set(T0 + 91 * DAY)
    legal, _ = place_hold(
        ctx, kind="legal", cameras=["cam-a"], start=T0, end=T0 + 2 * M, reason=REASON,
        placed_by="legal-1", role="legal", warrant_ref="W-17",
    )
    security, _ = place_hold(
        ctx, kind="security", cameras=["cam-a", "cam-b"], start=T0 + M, end=T0 + 3 * M,
        reason="suspected tailgating, under review", placed_by="sup-1", role="supervisor",
        expires_at=T0 + 120 * DAY,
    )
    with unit_of_work(ctx.engine) as session:
        report = retention_report(session, T0 + 91 * DAY)
    a = next(c for c in report.cameras if c.camera_id == "cam-a")
    # seg0, seg1 (legal), seg1, seg2 (security): three held, seg3 overdue.
    assert (a.held_segments, a.held_past_deadline, a.overdue_segments) == (3, 3, 1)
    assert a.oldest_overdue_deadline == T0 + 4 * M + 90 * DAY
    by_hold = {h.hold_id: (h.kind, h.reason, h.warrant_ref, h.segments) for h in a.holds}
    assert by_hold == {
        legal.id: ("legal", REASON, "W-17", 2),
        security.id: ("security", "suspected tailgating, under review", "", 2),
    }
    b = next(c for c in report.cameras if c.camera_id == "cam-b")
    assert (b.held_segments, b.overdue_segments) == (0, 1)  # its footage is outside the range
    assert [h.hold_id for h in b.holds] == [security.id]
    assert not report.ok and report.to_dict()["totals"]["overdue_segments"] == 2

    # After a purge took the overdue ones (its own tests prove the purge itself).
    _purge(ctx, [s for c in ("cam-a", "cam-b") for s in _overdue_ids(ctx, c, 91)])
    report = _report(ctx, 91)
    assert report.ok and report.overdue_segments == 0
    assert report.last_purge is not None and report.last_purge["purged"] == 2

    # Released: the legal hold's footage becomes overdue, the security hold's stays held.
    release_hold(ctx, legal.id, released_by="legal-2", role="legal", reason="case settled now")
    cams = {c["camera"]: c for c in (c.to_dict() for c in _report(ctx, 91).cameras)}
    assert (cams["cam-a"]["overdue_segments"], cams["cam-a"]["held_segments"]) == (1, 2)


def test_report_limited_to_sites(ctx: VaultContext) -> None:
    with unit_of_work(ctx.engine) as session:
        assert retention_report(session, T0, sites=["osaka-1"]).cameras == []
        assert len(retention_report(session, T0, sites=["tokyo-1"]).cameras) == 2


def _report(ctx: VaultContext, days: float) -> RetentionReport:
    with unit_of_work(ctx.engine) as session:
        return retention_report(session, T0 + timedelta(days=days))


def _overdue_ids(ctx: VaultContext, camera: str, days: float) -> list[str]:
    """What a purge at T0 + days would take: due and not held (the report's own figure)."""
    report = _report(ctx, days)
    (cam,) = [c for c in report.cameras if c.camera_id == camera]
    with unit_of_work(ctx.engine) as session:
        rows = list(session.exec(
            select(Segment).where(Segment.camera_id == camera)
            .where(col(Segment.retention_until) <= T0 + timedelta(days=days))
        ))
    held = [
        r.id for r in rows
        if any(h.start < r.end and r.start < h.end for h in cam.holds)
    ]
    due = [r.id for r in rows if r.id not in held]
    assert len(due) == cam.overdue_segments
    return due


def _purge(ctx: VaultContext, ids: list[str]) -> None:
    at = T0 + 91 * DAY
    with unit_of_work(ctx.engine) as session:
        for row in session.exec(select(Segment).where(col(Segment.id).in_(ids))):
            row.state = SegmentState.PURGED
            session.add(row)
        session.add(PurgeRun(
            id="00000000-0000-4000-8000-000000000001", started_at=at, finished_at=at, as_of=at,
            state="done", trigger="cli", purged=len(ids),
        ))
