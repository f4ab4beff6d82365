"""Holds (DESIGN §9): orders that suspend purging of cameras x range. Holds win over retention.

This module is the service side; the pure scope type lives in :mod:`vault.retention`.

The catalog is the authority: the purge plan reads the ``hold`` table, so footage a hold
covers is never purged whatever the store says. The store's legal hold is the second line —
on S3 it stops even someone holding the bucket's credentials (a governance bypass does not
lift a legal hold). Invariants:

- H1. A hold's row (and, for every change, its ledger event) is committed before any object's
  legal hold changes.
- H2. Every stored object (segment and thumbnail) an active hold covers carries the store's
  legal hold once :func:`hold_objects` for that hold (or :func:`reconcile_legal_holds`) has run;
  footage committed later inside the range gets it at commit (:func:`hold_new_segment`).
- H3. A legal hold is only taken off an object when no active hold covers it; after clearing,
  coverage is read again and any object a hold placed meanwhile covers is held again. (A
  placement commits its row, then sets; a release clears, then reads: one of the two sees the
  other.)
- H4. Changes are idempotent and re-runnable: a crash between H1 and H2 leaves the catalog
  right and the store behind, and :func:`reconcile_legal_holds` brings it level.

Order of a placement: validate (:func:`plan_placement`) -> decide and record the event
(durable) -> insert the row (commit) -> :func:`hold_objects`. Of a release: :func:`get_hold`
-> :func:`plan_release` -> record -> conditional update (commit) -> :func:`release_objects`.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select
from sqlmodel.sql.expression import SelectOfScalar

from vault import ledger
from vault.db import unit_of_work
from vault.errors import Conflict, InvalidInput, NotFound, Unavailable, VaultError
from vault.models import MAX_SEGMENT_SECONDS, Camera, Hold, HoldKind, Segment, SegmentState
from vault.retention import HoldScope
from vault.timerange import TimeRange, as_utc

if TYPE_CHECKING:
    from vault.lifecycle import VaultContext
    from vault.store.base import ObjectStore

__all__ = [
    "EXPIRY_ACTOR",
    "MAX_CAMERAS_PER_HOLD",
    "HoldChange",
    "StoreSync",
    "active_hold_rows",
    "active_holds",
    "apply_change",
    "camera_sites",
    "expire_security_holds",
    "get_hold",
    "hold_new_segment",
    "hold_objects",
    "holds_covering",
    "is_active",
    "list_holds",
    "place_hold",
    "plan_placement",
    "plan_release",
    "reconcile_legal_holds",
    "release_hold",
    "release_objects",
    "run_hold_expiry",
    "scope_of",
]

log = logging.getLogger(__name__)

EXPIRY_ACTOR = "system:expiry"
MAX_CAMERAS_PER_HOLD = 64
MIN_REASON_CHARS = 10
_PAGE = 1000
# A segment spans at most this: rows starting earlier cannot overlap (uses the camera index).
_MAX_SPAN = timedelta(seconds=MAX_SEGMENT_SECONDS)
# States whose objects still exist: a hold placed while a purge batch is in flight must
# protect those objects too (holds win over retention, I5).
_LIVE_STATES = (SegmentState.STORED.value, SegmentState.PURGING.value)


# -- reading --------------------------------------------------------------------------------


def scope_of(hold: Hold) -> HoldScope:
    return HoldScope(
        id=hold.id,
        kind=hold.kind,
        cameras=frozenset(json.loads(hold.cameras)),
        window=TimeRange(hold.start, hold.end),
    )


def is_active(hold: Hold, now: datetime) -> bool:
    """In force at ``now``: not released and, for expiring holds, not yet expired."""
    if hold.released_at is not None:
        return False
    return hold.expires_at is None or as_utc(hold.expires_at) > as_utc(now)


def _active_stmt(now: datetime) -> SelectOfScalar[Hold]:
    now = as_utc(now)
    return (
        select(Hold)
        .where(col(Hold.released_at).is_(None))
        .where(or_(col(Hold.expires_at).is_(None), col(Hold.expires_at) > now))
        .order_by(col(Hold.placed_at), col(Hold.id))
    )


def active_holds(session: Session, now: datetime) -> list[HoldScope]:
    """Holds in force at ``now``: not released and, for expiring holds, not yet expired."""
    return [scope_of(h) for h in session.exec(_active_stmt(now))]


def active_hold_rows(session: Session, now: datetime) -> list[Hold]:
    """The rows of :func:`active_holds`, for callers that need reasons and who placed them."""
    return list(session.exec(_active_stmt(now)))


def holds_covering(
    session: Session, camera_id: str, span: TimeRange, now: datetime
) -> list[HoldScope]:
    """The active holds that cover footage of ``camera_id`` over ``span`` (even partly)."""
    stmt = (
        _active_stmt(now)
        .where(col(Hold.start) < span.end)
        .where(col(Hold.end) > span.start)
    )
    scopes = (scope_of(h) for h in session.exec(stmt))
    return [s for s in scopes if s.covers(camera_id, span)]


def get_hold(session: Session, hold_id: str) -> Hold:
    hold = session.get(Hold, hold_id)
    if hold is None:
        raise NotFound(f"no hold {hold_id!r}")
    return hold


def list_holds(
    session: Session, now: datetime, *, state: str = "all", limit: int = 500
) -> list[Hold]:
    """Holds, newest first; ``state`` is ``active``, ``inactive`` (released or expired) or
    ``all``."""
    if state not in ("active", "inactive", "all"):
        raise InvalidInput(f"state must be active, inactive or all (got {state!r})")
    # Holds are orders, not footage: few rows. Filtering here keeps one definition of active.
    rows = session.exec(select(Hold).order_by(col(Hold.placed_at).desc(), col(Hold.id)))
    wanted = (
        h for h in rows
        if state == "all" or is_active(h, now) is (state == "active")
    )
    return list(itertools.islice(wanted, limit))


def camera_sites(session: Session, hold: Hold) -> frozenset[str]:
    """Sites of a hold's cameras (a camera since removed from the catalog counts as no site)."""
    ids = json.loads(hold.cameras)
    rows = session.exec(select(Camera).where(col(Camera.id).in_(ids)))
    return frozenset(c.site_id for c in rows)


# -- changes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldChange:
    """A validated change to one hold, not yet written.

    ``hold`` is the row as it will be after the change (detached); ``sites`` are the sites of
    its cameras (for the policy); ``details`` is what the ledger event records.
    """

    action: str  # holds.place | holds.release | holds.expire
    hold: Hold
    sites: frozenset[str]
    details: dict[str, Any]

    @property
    def target(self) -> str:
        return f"hold:{self.hold.id}"


def _details(hold: Hold) -> dict[str, Any]:
    return {
        "hold": hold.id,
        "kind": hold.kind,
        "cameras": json.loads(hold.cameras),
        "start": as_utc(hold.start).isoformat(),
        "end": as_utc(hold.end).isoformat(),
        "reason_given": hold.reason,
        "warrant_ref": hold.warrant_ref,
        "placed_by": hold.placed_by,
        "expires_at": as_utc(hold.expires_at).isoformat() if hold.expires_at else None,
    }


def _reason(text: str, what: str) -> str:
    text = text.strip()
    if len(text) < MIN_REASON_CHARS:
        raise InvalidInput(f"{what} must say why, in at least {MIN_REASON_CHARS} characters")
    if len(text) > 2000:
        raise InvalidInput(f"{what} is longer than 2000 characters")
    return text


def plan_placement(
    session: Session,
    *,
    kind: str,
    cameras: Sequence[str],
    start: datetime,
    end: datetime,
    reason: str,
    placed_by: str,
    now: datetime,
    warrant_ref: str = "",
    expires_at: datetime | None = None,
) -> HoldChange:
    """Validate a hold to be placed; raise :class:`InvalidInput` / :class:`NotFound`.

    Rules: a known kind; 1..64 existing cameras; aware instants with ``end`` after ``start``;
    a reason of at least 10 characters; a security hold has an ``expires_at`` after ``now``
    (a legal hold may have one too, also after ``now``). The range may reach into the future:
    footage recorded later inside it is held at commit.
    """
    try:
        hold_kind = HoldKind(kind)
    except ValueError:
        raise InvalidInput(f"kind must be 'legal' or 'security' (got {kind!r})") from None
    window = TimeRange(start, end)  # aware instants, end not before start (I8)
    if window.duration.total_seconds() <= 0:
        raise InvalidInput("the range is empty: end must be after start")
    wanted = sorted(set(cameras))
    if not wanted:
        raise InvalidInput("a hold names at least one camera")
    if len(wanted) > MAX_CAMERAS_PER_HOLD:
        raise InvalidInput(f"at most {MAX_CAMERAS_PER_HOLD} cameras per hold")
    now = as_utc(now)
    expiry = as_utc(expires_at, field="expires_at") if expires_at is not None else None
    if hold_kind is HoldKind.SECURITY and expiry is None:
        raise InvalidInput("a security hold needs expires_at")
    if expiry is not None and expiry <= now:
        raise InvalidInput(f"expires_at {expiry.isoformat()} is not in the future")
    warrant = warrant_ref.strip()
    if len(warrant) > 200:
        raise InvalidInput("warrant_ref is longer than 200 characters")
    sites: set[str] = set()
    for camera_id in wanted:
        camera = session.get(Camera, camera_id)
        if camera is None:
            raise NotFound(f"no camera {camera_id!r}")
        sites.add(camera.site_id)
    hold = Hold(
        id=str(uuid.uuid4()),
        kind=hold_kind.value,
        cameras=json.dumps(wanted),
        start=window.start,
        end=window.end,
        reason=_reason(reason, "reason"),
        warrant_ref=warrant,
        placed_by=placed_by,
        placed_at=now,
        expires_at=expiry,
    )
    return HoldChange("holds.place", hold, frozenset(sites), _details(hold))


def plan_release(
    session: Session, hold: Hold, *, released_by: str, reason: str, now: datetime
) -> HoldChange:
    """Validate releasing ``hold``; :class:`Conflict` if it was released already."""
    if hold.released_at is not None:
        raise Conflict(
            f"hold {hold.id} was already released by {hold.released_by} at "
            f"{as_utc(hold.released_at).isoformat()}"
        )
    why = _reason(reason, "release reason")
    released = Hold(**hold.model_dump())
    released.released_by = released_by
    released.released_at = as_utc(now)
    released.release_reason = why
    details = {**_details(released), "released_by": released_by, "release_reason": why}
    return HoldChange("holds.release", released, camera_sites(session, hold), details)


def apply_change(session: Session, change: HoldChange) -> Hold:
    """Write a planned change in the caller's transaction; return the row as stored.

    A release is a conditional update: of two people releasing at once, one wins and the other
    gets :class:`Conflict`.
    """
    hold = change.hold
    if change.action == "holds.place":
        session.add(hold)
        session.flush()
        return hold
    result = session.execute(
        update(Hold)
        .where(col(Hold.id) == hold.id)
        .where(col(Hold.released_at).is_(None))
        .values(
            released_by=hold.released_by,
            released_at=hold.released_at,
            release_reason=hold.release_reason,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"hold {hold.id} was released meanwhile")
    stored = session.get(Hold, hold.id)
    assert stored is not None
    session.refresh(stored)
    return stored


def _append(session: Session, change: HoldChange, actor: str, role: str, at: datetime,
            client: str = "") -> None:
    ledger.append(
        session,
        at=at,
        actor=actor,
        role=role,
        action=change.action,
        target=change.target,
        decision="done",
        reason=str(change.details.get("release_reason") or change.hold.reason)[:1000],
        client=client,
        details=change.details,
    )


def place_hold(
    ctx: VaultContext,
    *,
    kind: str,
    cameras: Sequence[str],
    start: datetime,
    end: datetime,
    reason: str,
    placed_by: str,
    role: str,
    warrant_ref: str = "",
    expires_at: datetime | None = None,
    client: str = "",
) -> tuple[Hold, StoreSync]:
    """Place a hold outside the API (CLI, tests): row and ledger event in one transaction,
    then the store's legal holds. No policy decision here: callers are trusted."""
    now = ctx.clock.now()
    with unit_of_work(ctx.engine) as session:
        change = plan_placement(
            session, kind=kind, cameras=cameras, start=start, end=end, reason=reason,
            placed_by=placed_by, now=now, warrant_ref=warrant_ref, expires_at=expires_at,
        )
        hold = apply_change(session, change)
        _append(session, change, placed_by, role, now, client)
    return hold, hold_objects(ctx, scope_of(hold))


def release_hold(
    ctx: VaultContext, hold_id: str, *, released_by: str, role: str, reason: str,
    client: str = "",
) -> tuple[Hold, StoreSync]:
    """Release a hold outside the API (CLI, tests); then clear the legal holds it alone set."""
    now = ctx.clock.now()
    with unit_of_work(ctx.engine) as session:
        change = plan_release(
            session, get_hold(session, hold_id), released_by=released_by, reason=reason, now=now
        )
        hold = apply_change(session, change)
        _append(session, change, released_by, role, now, client)
    return hold, release_objects(ctx, [scope_of(hold)])


def expire_security_holds(session: Session, now: datetime) -> list[Hold]:
    """Mark security holds whose ``expires_at`` has passed as released by ``system:expiry``.

    In the caller's transaction, one ledger event per hold in the same transaction. A hold's
    ``released_at`` is its ``expires_at`` (when it stopped being in force), the event's time is
    ``now``. Returns the released holds; once the transaction has committed, pass their scopes
    to :func:`release_objects` (or use :func:`run_hold_expiry`, which does both).
    """
    now = as_utc(now)
    due = list(
        session.exec(
            select(Hold)
            .where(Hold.kind == HoldKind.SECURITY.value)
            .where(col(Hold.released_at).is_(None))
            .where(col(Hold.expires_at).is_not(None))
            .where(col(Hold.expires_at) <= now)
            .order_by(col(Hold.expires_at), col(Hold.id))
        )
    )
    expired: list[Hold] = []
    for hold in due:
        assert hold.expires_at is not None
        until = as_utc(hold.expires_at)
        released = Hold(**hold.model_dump())
        released.released_by = EXPIRY_ACTOR
        released.released_at = until
        released.release_reason = f"security hold expired at {until.isoformat()}"
        change = HoldChange(
            "holds.expire",
            released,
            camera_sites(session, hold),
            {**_details(released), "released_by": EXPIRY_ACTOR,
             "release_reason": released.release_reason},
        )
        try:
            expired.append(apply_change(session, change))
        except Conflict:
            continue  # released by a person meanwhile: nothing left to expire
        _append(session, change, EXPIRY_ACTOR, "system", now)
    if expired:
        log.info("security holds expired count=%d holds=%s", len(expired),
                 ",".join(h.id for h in expired))
    return expired


def run_hold_expiry(ctx: VaultContext) -> tuple[list[Hold], StoreSync]:
    """The scheduler's job: expire due security holds (commit), then clear their legal holds."""
    with unit_of_work(ctx.engine) as session:
        expired = expire_security_holds(session, ctx.clock.now())
    sync = release_objects(ctx, [scope_of(h) for h in expired]) if expired else StoreSync()
    return expired, sync


# -- the store's legal holds ----------------------------------------------------------------


@dataclass
class StoreSync:
    """What a legal-hold sync did to the store."""

    held: int = 0  # objects that got the legal hold
    released: int = 0  # objects whose legal hold was removed
    kept: int = 0  # objects left held: another active hold covers them
    unchanged: int = 0  # objects already as they should be
    missing: int = 0  # objects the catalog names but the store does not have
    failed: list[str] = field(default_factory=list)  # keys the store refused or could not do
    complete: bool = True  # False when the store became unavailable part-way

    def merge(self, other: StoreSync) -> StoreSync:
        return StoreSync(
            held=self.held + other.held,
            released=self.released + other.released,
            kept=self.kept + other.kept,
            unchanged=self.unchanged + other.unchanged,
            missing=self.missing + other.missing,
            failed=[*self.failed, *other.failed],
            complete=self.complete and other.complete,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "released": self.released,
            "kept": self.kept,
            "unchanged": self.unchanged,
            "missing": self.missing,
            "failed": len(self.failed),
            "failed_keys": self.failed[:20],
            "complete": self.complete,
        }


@dataclass(frozen=True, slots=True)
class _Footage:
    camera_id: str
    span: TimeRange
    keys: tuple[str, ...]  # the segment's object, then its thumbnail if any


def _footage_in(engine: Engine, camera_id: str, window: TimeRange) -> Iterator[_Footage]:
    """Live segments of one camera overlapping ``window``, in pages (a hold may cover years)."""
    after: tuple[datetime, str] | None = None
    while True:
        stmt = (
            sa_select(
                col(Segment.id), col(Segment.start), col(Segment.end), col(Segment.object_key),
                col(Segment.thumb_key),
            )
            .where(col(Segment.camera_id) == camera_id)
            .where(col(Segment.start) >= window.start - _MAX_SPAN)
            .where(col(Segment.start) < window.end)
            .where(col(Segment.end) > window.start)
            .where(col(Segment.state).in_(_LIVE_STATES))
            .order_by(col(Segment.start), col(Segment.id))
            .limit(_PAGE)
        )
        if after is not None:
            stmt = stmt.where(
                or_(
                    col(Segment.start) > after[0],
                    (col(Segment.start) == after[0]) & (col(Segment.id) > after[1]),
                )
            )
        with unit_of_work(engine) as session:
            rows = list(session.execute(stmt))
        for seg_id, start, end, key, thumb in rows:
            keys = (key,) if thumb is None else (key, thumb)
            yield _Footage(camera_id, TimeRange(start, end), keys)
            after = (start, seg_id)
        if len(rows) < _PAGE:
            return


def _set(store: ObjectStore, key: str, on: bool, sync: StoreSync) -> bool:
    """Bring one object's legal hold to ``on``; False if the store is unavailable."""
    try:
        info = store.head(key)
        if info is None:
            sync.missing += 1
            return True
        if info.legal_hold is on:
            sync.unchanged += 1
            return True
        store.set_legal_hold(key, on)
    except NotFound:
        sync.missing += 1
        return True
    except Unavailable as exc:
        log.warning("legal hold sync stopped: store unavailable key=%s error=%s", key, exc.message)
        sync.failed.append(key)
        sync.complete = False
        return False
    except VaultError as exc:
        log.warning("legal hold not changed key=%s on=%s error=%s", key, on, exc.message)
        sync.failed.append(key)
        return True
    if on:
        sync.held += 1
    else:
        sync.released += 1
    return True


def hold_objects(ctx: VaultContext, scope: HoldScope) -> StoreSync:
    """Put the store's legal hold on every live object the hold covers (H2). Re-runnable."""
    sync = StoreSync()
    for camera_id in sorted(scope.cameras):
        for footage in _footage_in(ctx.engine, camera_id, scope.window):
            for key in footage.keys:
                if not _set(ctx.store, key, True, sync):
                    log.info("legal hold sync hold=%s %s", scope.id, sync.to_dict())
                    return sync
    log.info(
        "legal holds set hold=%s held=%d unchanged=%d missing=%d failed=%d",
        scope.id, sync.held, sync.unchanged, sync.missing, len(sync.failed),
    )
    return sync


def _covered(scopes: Iterable[HoldScope], footage: _Footage) -> bool:
    return any(s.covers(footage.camera_id, footage.span) for s in scopes)


def release_objects(ctx: VaultContext, released: Sequence[HoldScope]) -> StoreSync:
    """Take the legal hold off objects of ``released`` holds that no active hold covers (H3).

    Objects another active hold covers are left held (``kept``). After clearing, coverage is
    read again: an object a hold placed meanwhile covers gets its legal hold back.
    """
    sync = StoreSync()
    cleared: list[_Footage] = []
    with unit_of_work(ctx.engine) as session:
        active = active_holds(session, ctx.clock.now())
    for scope in released:
        for camera_id in sorted(scope.cameras):
            for footage in _footage_in(ctx.engine, camera_id, scope.window):
                if _covered(active, footage):
                    sync.kept += len(footage.keys)
                    continue
                for key in footage.keys:
                    if not _set(ctx.store, key, False, sync):
                        return sync
                cleared.append(footage)
    if cleared:
        with unit_of_work(ctx.engine) as session:
            now_active = active_holds(session, ctx.clock.now())
        # Counted as released, then held again: the counts say what happened to the store.
        for footage in cleared:
            if _covered(now_active, footage):
                for key in footage.keys:
                    if not _set(ctx.store, key, True, sync):
                        return sync
    log.info(
        "legal holds released holds=%s released=%d kept=%d unchanged=%d missing=%d failed=%d",
        ",".join(s.id for s in released), sync.released, sync.kept, sync.unchanged,
        sync.missing, len(sync.failed),
    )
    return sync


def reconcile_legal_holds(ctx: VaultContext) -> StoreSync:
    """Bring the store's legal holds level with the catalog (H4): held where an active hold
    covers, cleared where only released or expired holds did. For startup or a nightly job."""
    now = ctx.clock.now()
    with unit_of_work(ctx.engine) as session:
        holds = list(session.exec(select(Hold).order_by(col(Hold.placed_at))))
    sync = StoreSync()
    for hold in holds:
        if is_active(hold, now):
            sync = sync.merge(hold_objects(ctx, scope_of(hold)))
    inactive = [scope_of(h) for h in holds if not is_active(h, now)]
    if inactive:
        sync = sync.merge(release_objects(ctx, inactive))
    return sync


def hold_new_segment(ctx: VaultContext, segment: Segment) -> bool:
    """At commit: give a new segment's objects the legal hold if an active hold covers it.

    Called after the segment's row is committed (so a hold placed at the same moment either
    sees the row or is seen here, H3's argument). Raises :class:`Unavailable` only, so the
    committer retries; any other store refusal is logged — the catalog's hold still stops the
    purge, and :func:`reconcile_legal_holds` retries the store.
    """
    span = TimeRange(segment.start, segment.end)
    with unit_of_work(ctx.engine) as session:
        covering = holds_covering(session, segment.camera_id, span, ctx.clock.now())
    if not covering:
        return False
    keys = [segment.object_key] + ([segment.thumb_key] if segment.thumb_key else [])
    for key in keys:
        try:
            ctx.store.set_legal_hold(key, True)
        except Unavailable:
            raise
        except VaultError as exc:
            log.warning(
                "legal hold not set at commit segment=%s key=%s error=%s",
                segment.id, key, exc.message,
            )
    log.info(
        "segment held at commit camera=%s segment=%s holds=%s",
        segment.camera_id, segment.id, ",".join(s.id for s in covering),
    )
    return True
