"""The retention report (issue 4): per camera, what is kept, what is overdue, what is held and why.

"Overdue" is stored footage whose ``retention_until`` has passed (``<= as_of``) and that no
active hold covers: the nightly purge should have taken it, so the morning after a purge the
total must be 0 (I5). "Held" is stored footage an active hold covers, whatever its deadline;
``held_past_deadline`` is the part of it the purge would otherwise have taken.

Counts come from SQL aggregates (one query per camera and hold), never from loading segments,
so the report stays cheap on millions of them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from vault.holds import active_hold_rows, scope_of
from vault.models import Camera, Hold, PurgeRun, RetentionPolicy, Segment, SegmentState
from vault.retention import HoldScope
from vault.timerange import TimeRange, as_utc

__all__ = ["CameraRetention", "HeldBy", "RetentionReport", "retention_report"]


@dataclass(frozen=True)
class HeldBy:
    """One active hold, as it bears on one camera's stored footage."""

    hold_id: str
    kind: str
    reason: str
    warrant_ref: str
    placed_by: str
    placed_at: datetime
    expires_at: datetime | None
    start: datetime
    end: datetime
    segments: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "hold": self.hold_id,
            "kind": self.kind,
            "reason": self.reason,
            "warrant_ref": self.warrant_ref,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "segments": self.segments,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class CameraRetention:
    camera_id: str
    site_id: str
    enabled: bool
    policy_id: str
    days: int
    oldest_start: datetime | None
    newest_end: datetime | None
    stored_segments: int
    stored_bytes: int
    overdue_segments: int  # past retention_until and not held: must be 0 after a purge
    overdue_bytes: int
    oldest_overdue_deadline: datetime | None
    held_segments: int
    held_bytes: int
    held_past_deadline: int  # held segments the purge would otherwise have taken
    purging_segments: int  # in a purge batch right now (or left by a crash, until resumed)
    holds: list[HeldBy] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "camera": self.camera_id,
            "site": self.site_id,
            "enabled": self.enabled,
            "policy": self.policy_id,
            "days": self.days,
            "oldest_start": iso(self.oldest_start),
            "newest_end": iso(self.newest_end),
            "stored_segments": self.stored_segments,
            "stored_bytes": self.stored_bytes,
            "overdue_segments": self.overdue_segments,
            "overdue_bytes": self.overdue_bytes,
            "oldest_overdue_deadline": iso(self.oldest_overdue_deadline),
            "held_segments": self.held_segments,
            "held_bytes": self.held_bytes,
            "held_past_deadline": self.held_past_deadline,
            "purging_segments": self.purging_segments,
            "holds": [h.to_dict() for h in self.holds],
        }


@dataclass(frozen=True)
class RetentionReport:
    as_of: datetime
    cameras: list[CameraRetention]
    last_purge: dict[str, Any] | None

    @property
    def overdue_segments(self) -> int:
        return sum(c.overdue_segments for c in self.cameras)

    @property
    def ok(self) -> bool:
        """No footage past its deadline without a hold: what the morning after a purge shows."""
        return self.overdue_segments == 0

    def to_dict(self) -> dict[str, Any]:
        cams = self.cameras
        return {
            "as_of": self.as_of.isoformat(),
            "ok": self.ok,
            "totals": {
                "cameras": len(cams),
                "stored_segments": sum(c.stored_segments for c in cams),
                "stored_bytes": sum(c.stored_bytes for c in cams),
                "overdue_segments": self.overdue_segments,
                "overdue_bytes": sum(c.overdue_bytes for c in cams),
                "held_segments": sum(c.held_segments for c in cams),
                "held_bytes": sum(c.held_bytes for c in cams),
                "held_past_deadline": sum(c.held_past_deadline for c in cams),
                "purging_segments": sum(c.purging_segments for c in cams),
            },
            "last_purge": self.last_purge,
            "cameras": [c.to_dict() for c in cams],
        }


def _overlaps(window: TimeRange) -> ColumnElement[bool]:
    return and_(col(Segment.start) < window.end, col(Segment.end) > window.start)


def _aggregate(
    session: Session, camera_id: str, *conditions: ColumnElement[bool]
) -> tuple[int, int, Any, Any, Any]:
    """(count, bytes, min start, max end, min retention_until) of stored segments matching."""
    stmt = sa_select(
        func.count(),
        func.coalesce(func.sum(col(Segment.bytes)), 0),
        func.min(col(Segment.start)),
        func.max(col(Segment.end)),
        func.min(col(Segment.retention_until)),
    ).where(
        col(Segment.camera_id) == camera_id,
        col(Segment.state) == SegmentState.STORED.value,
        *conditions,
    )
    count, size, first, last, deadline = session.execute(stmt).one()
    return int(count), int(size), first, last, deadline


def _aware(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _last_purge(session: Session) -> dict[str, Any] | None:
    run = session.exec(
        select(PurgeRun).order_by(col(PurgeRun.started_at).desc(), col(PurgeRun.id)).limit(1)
    ).first()
    if run is None:
        return None
    return {
        "id": run.id,
        "state": run.state,
        "started_at": as_utc(run.started_at).isoformat(),
        "finished_at": as_utc(run.finished_at).isoformat() if run.finished_at else None,
        "as_of": as_utc(run.as_of).isoformat(),
        "purged": run.purged,
        "held_back": run.held_back,
        "failed": run.failed,
    }


def _camera(
    session: Session,
    camera: Camera,
    policy: RetentionPolicy | None,
    holds: Sequence[tuple[Hold, HoldScope]],
    as_of: datetime,
) -> CameraRetention:
    mine = [(h, s) for h, s in holds if camera.id in s.cameras]
    held_by = or_(*(_overlaps(s.window) for _, s in mine)) if mine else None
    due = col(Segment.retention_until) <= as_of
    stored, stored_bytes, first, last, _ = _aggregate(session, camera.id)
    purging = session.execute(
        sa_select(func.count()).where(
            col(Segment.camera_id) == camera.id,
            col(Segment.state) == SegmentState.PURGING.value,
        )
    ).scalar_one()
    not_held = [not_(held_by)] if held_by is not None else []
    overdue, overdue_bytes, _, _, oldest_deadline = _aggregate(
        session, camera.id, due, *not_held
    )
    held = held_bytes = held_past = 0
    per_hold: list[HeldBy] = []
    if held_by is not None:
        held, held_bytes, *_ = _aggregate(session, camera.id, held_by)
        held_past = _aggregate(session, camera.id, held_by, due)[0]
        for hold, scope in mine:
            count, size, *_ = _aggregate(session, camera.id, _overlaps(scope.window))
            per_hold.append(
                HeldBy(
                    hold_id=hold.id,
                    kind=hold.kind,
                    reason=hold.reason,
                    warrant_ref=hold.warrant_ref,
                    placed_by=hold.placed_by,
                    placed_at=as_utc(hold.placed_at),
                    expires_at=_aware(hold.expires_at),
                    start=scope.window.start,
                    end=scope.window.end,
                    segments=count,
                    bytes=size,
                )
            )
    return CameraRetention(
        camera_id=camera.id,
        site_id=camera.site_id,
        enabled=camera.enabled,
        policy_id=camera.retention_policy_id,
        days=policy.days if policy is not None else 0,
        oldest_start=_aware(first),
        newest_end=_aware(last),
        stored_segments=stored,
        stored_bytes=stored_bytes,
        overdue_segments=overdue,
        overdue_bytes=overdue_bytes,
        oldest_overdue_deadline=_aware(oldest_deadline) if overdue else None,
        held_segments=held,
        held_bytes=held_bytes,
        held_past_deadline=held_past,
        purging_segments=int(purging),
        holds=per_hold,
    )


def retention_report(
    session: Session, as_of: datetime, *, sites: Collection[str] | None = None
) -> RetentionReport:
    """The report at ``as_of``; ``sites`` limits it to cameras of those sites (None: all)."""
    as_of = as_utc(as_of)
    stmt = select(Camera).order_by(col(Camera.site_id), col(Camera.id))
    if sites is not None:
        stmt = stmt.where(col(Camera.site_id).in_(sorted(sites)))
    cameras = list(session.exec(stmt))
    policies = {p.id: p for p in session.exec(select(RetentionPolicy))}
    holds = [(h, scope_of(h)) for h in active_hold_rows(session, as_of)]
    return RetentionReport(
        as_of=as_of,
        cameras=[
            _camera(session, c, policies.get(c.retention_policy_id), holds, as_of)
            for c in cameras
        ],
        last_purge=_last_purge(session),
    )
