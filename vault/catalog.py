"""Catalog queries and the config -> catalog sync. Services flush; the unit of work commits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CompoundSelect, bindparam, false, true, union_all
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from vault import ledger
from vault.config import VaultConfig
from vault.db import Prepared
from vault.errors import NotFound
from vault.models import (
    MAX_SEGMENT_SECONDS,
    SHORT_GAP,
    Camera,
    CameraStatus,
    Gap,
    RetentionPolicy,
    Segment,
    Site,
)
from vault.timerange import TimeRange, as_utc, utcnow

log = logging.getLogger(__name__)

__all__ = [
    "TimelineGap",
    "TimelineSegment",
    "camera_or_404",
    "gaps_in_range",
    "last_segment_end",
    "record_status",
    "segments_in_range",
    "sync_config",
    "timeline",
]


_CAMERA_FIELDS = (
    "site_id", "name", "location", "source_ref", "purpose", "retention_policy_id", "enabled"
)


def sync_config(
    session: Session,
    config: VaultConfig,
    redact: dict[str, str],
    at: datetime | None = None,
) -> None:
    """Upsert sites, policies and cameras from the config.

    ``redact`` maps camera id to the redacted source reference: the catalog never sees
    credentials (I9). Cameras missing from the config are disabled, never deleted: their
    footage stays under its retention. Every camera added, changed or disabled is written to
    the ledger in the same transaction (I10), attributed to the config; ``at`` is when.
    """
    when = as_utc(at) if at is not None else utcnow()
    before = {
        c.id: {f: getattr(c, f) for f in _CAMERA_FIELDS} for c in session.exec(select(Camera))
    }
    for site in config.sites:
        session.merge(Site(id=site.id, name=site.name, timezone=site.timezone))
    for pol in config.retention_policies:
        existing = session.get(RetentionPolicy, pol.id)
        if existing is None:
            session.add(
                RetentionPolicy(
                    id=pol.id,
                    days=pol.days,
                    min_days=pol.min_days,
                    max_days=pol.max_days,
                    basis=pol.basis,
                    effective_from=pol.effective_from,
                )
            )
            continue
        # A policy that exists is changed only by the privacy officer (`retention set-policy`
        # or PUT /retention-policies/ID): that path recomputes deadlines, moves locks and
        # records the reason. A config file that says otherwise is reported, not obeyed.
        differs = {
            name: {"catalog": getattr(existing, name), "config": getattr(pol, name)}
            for name in ("days", "min_days", "max_days")
            if getattr(existing, name) != getattr(pol, name)
        }
        if differs:
            log.warning(
                "retention policy %s in the config differs from the catalog (%s); the catalog "
                "stands: change it with `cctv-vault retention set-policy`",
                pol.id,
                ", ".join(f"{k} {v['catalog']} vs {v['config']}" for k, v in differs.items()),
            )
            ledger.append(
                session,
                at=when,
                actor="system:config",
                role="system",
                action="retention.config_ignored",
                target=f"retention-policy:{pol.id}",
                decision="refused",
                reason="existing policies change only through the privacy officer",
                details=differs,
            )
        existing.basis = pol.basis
        session.add(existing)
    session.flush()
    known = {c.id for c in config.cameras}
    for cam in config.cameras:
        session.merge(
            Camera(
                id=cam.id,
                site_id=cam.site,
                name=cam.name,
                location=cam.location,
                source_ref=redact.get(cam.id, cam.source.kind),
                purpose=cam.purpose,
                retention_policy_id=cam.retention_policy,
                enabled=cam.enabled,
            )
        )
    for stale in session.exec(select(Camera).where(col(Camera.id).not_in(known))):
        stale.enabled = False
        session.add(stale)
    session.flush()
    for camera in session.exec(select(Camera).order_by(col(Camera.id))):
        now = {f: getattr(camera, f) for f in _CAMERA_FIELDS}
        old = before.get(camera.id)
        if old == now:
            continue
        changed = sorted(f for f in _CAMERA_FIELDS if old is None or old[f] != now[f])
        action = "camera.added" if old is None else "camera.changed"
        ledger.append(
            session,
            at=when,
            actor="system:config",
            role="system",
            action=action,
            target=f"camera:{camera.id}",
            decision="done",
            details={"fields": changed, **{f: now[f] for f in changed}},
        )


def camera_or_404(session: Session, camera_id: str) -> Camera:
    camera = session.get(Camera, camera_id)
    if camera is None:
        raise NotFound(f"no camera {camera_id!r}")
    return camera


_SEG = Segment.__table__.c  # type: ignore[attr-defined]
_GAP = Gap.__table__.c  # type: ignore[attr-defined]

# The one definition of "overlaps the window" for each table, shared by the ORM lookups and
# the timeline's light one. Parameters from :func:`_range_params`. A segment spans at most
# ``MAX_SEGMENT_SECONDS``, so only rows starting after ``window.start`` minus that can overlap:
# the ``(camera_id, start)`` index bounds the scan on both sides.
_SEGMENT_OVERLAPS = (
    _SEG.camera_id == bindparam("camera"),
    _SEG.start >= bindparam("lower"),
    _SEG.start < bindparam("upper"),
    _SEG.end > bindparam("begin"),
)
# A gap may last any time; one no longer than SHORT_GAP overlaps the window only if it starts
# after ``window.start`` minus that (the start index bounds it on both sides), and the longer
# ones are few and flagged, found through ``(camera_id, is_long, end)`` among those still open
# at the window's start. Two bounded scans instead of one over the camera's whole history.
_SHORT_GAP_OVERLAPS = (
    _GAP.camera_id == bindparam("camera"),
    _GAP.start >= bindparam("gap_lower"),
    _GAP.start < bindparam("upper"),
    _GAP.end > bindparam("begin"),
    _GAP.is_long == false(),
)
_LONG_GAP_OVERLAPS = (
    _GAP.camera_id == bindparam("camera"),
    _GAP.is_long == true(),
    _GAP.end > bindparam("begin"),
    _GAP.start < bindparam("upper"),
)


def _gaps_overlapping(*columns: Any) -> CompoundSelect[Any]:
    """``columns`` of the gaps overlapping the window, in no particular order: an ``ORDER BY``
    would have SQLite read the long branch through the start index too (to merge two sorted
    streams), unbounded again; the caller sorts the few rows."""
    short = core_select(*columns).where(*_SHORT_GAP_OVERLAPS)
    long = core_select(*columns).where(*_LONG_GAP_OVERLAPS)
    return union_all(short, long)


def _range_params(camera_id: str, window: TimeRange) -> dict[str, object]:
    return {
        "camera": camera_id,
        "lower": window.start - timedelta(seconds=MAX_SEGMENT_SECONDS),
        "upper": window.end,
        "begin": window.start,
        "gap_lower": window.start - SHORT_GAP,
    }


def segments_in_range(
    session: Session, camera_id: str, window: TimeRange, *, states: Sequence[str] = ("stored",)
) -> list[Segment]:
    """Segments of a camera overlapping ``window`` (half-open), ordered by start."""
    stmt = (
        select(Segment)
        .where(*_SEGMENT_OVERLAPS)
        .where(col(Segment.state).in_(list(states)))
        .order_by(col(Segment.start))
    )
    return list(session.exec(stmt, params=_range_params(camera_id, window)))


def last_segment_end(session: Session, camera_id: str) -> datetime | None:
    """End of the camera's newest segment (any state), or None if it never recorded."""
    stmt = (
        select(Segment)
        .where(Segment.camera_id == camera_id)
        .order_by(col(Segment.start).desc())
        .limit(1)
    )
    newest = session.exec(stmt).first()
    return newest.end if newest else None


def gaps_in_range(session: Session, camera_id: str, window: TimeRange) -> list[Gap]:
    """Gaps of a camera overlapping ``window`` (half-open), ordered by start."""
    params = _range_params(camera_id, window)
    found = [
        gap
        for overlaps in (_SHORT_GAP_OVERLAPS, _LONG_GAP_OVERLAPS)
        for gap in session.exec(select(Gap).where(*overlaps), params=params)
    ]
    return sorted(found, key=lambda gap: (gap.start, gap.end))


@dataclass(frozen=True, slots=True)
class TimelineSegment:
    """What a timeline shows of a stored segment: never keys, hashes or object names."""

    id: str
    start: datetime
    end: datetime
    bytes: int
    codec: str
    width: int
    height: int
    has_thumbnail: bool


@dataclass(frozen=True, slots=True)
class TimelineGap:
    start: datetime
    end: datetime
    reason: str


# Built once: plain Core statements over the columns a timeline answers with, compiled once per
# dialect and run on the driver's cursor (no ORM objects, no per-execution SQLAlchemy work).
_TIMELINE_SEGMENTS = Prepared(
    core_select(
        _SEG.id, _SEG.start, _SEG.end, _SEG.bytes, _SEG.codec, _SEG.width, _SEG.height,
        _SEG.thumb_key,
    )
    .where(*_SEGMENT_OVERLAPS)
    .where(_SEG.state == "stored")
    .order_by(_SEG.start)
)
_TIMELINE_GAPS = Prepared(_gaps_overlapping(_GAP.start, _GAP.end, _GAP.reason))


def timeline(
    conn: Connection, camera_id: str, window: TimeRange
) -> tuple[list[TimelineSegment], list[TimelineGap]]:
    """Stored segments and gaps of a camera overlapping ``window``: the same rows as
    :func:`segments_in_range` and :func:`gaps_in_range`, as light records (metadata only)."""
    params = _range_params(camera_id, window)
    segments = [
        TimelineSegment(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] is not None)
        for r in _TIMELINE_SEGMENTS.rows(conn, params)
    ]
    gaps = sorted(
        (TimelineGap(r[0], r[1], r[2]) for r in _TIMELINE_GAPS.rows(conn, params)),
        key=lambda gap: (gap.start, gap.end),
    )
    return segments, gaps


def record_status(
    session: Session,
    camera_id: str,
    state: str,
    detail: str,
    at: datetime,
    last_segment_end: datetime | None = None,
) -> None:
    row = session.get(CameraStatus, camera_id)
    if row is None:
        row = CameraStatus(camera_id=camera_id, state=state, detail=detail, updated_at=as_utc(at))
    row.state = state
    row.detail = detail[:500]
    row.updated_at = as_utc(at)
    if last_segment_end is not None:
        row.last_segment_end = last_segment_end
    session.add(row)
