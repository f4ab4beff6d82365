"""Retention policy changes (DESIGN §9): ``retention_until = end + days``, recomputed for stored
footage when the privacy officer changes a policy's days.

Invariants:

- P1. ``min_days <= days <= max_days`` and ``days > 0``; anything else is :class:`InvalidInput`
  and changes nothing.
- P2. The change, its ledger event and every stored segment's new ``retention_until`` (of the
  cameras on that policy) commit in one transaction — or the event is made durable first, by
  the API's ledger writer — before the store is touched.
- P3. The store's retention lock only grows: where the new deadline is later, the lock (of the
  segment and its thumbnail) is extended to it; where it is earlier, the store keeps its longer
  lock. The catalog deadline is what the purge plans by; an object whose store lock outlasts it
  is deleted once that lock ends (S3 governance mode, filesystem alike — shortening a lock on
  S3 needs ``s3:BypassGovernanceRetention``, which this service does not use). See
  ``docs/guide/retention.md``.
- P4. :func:`sync_retention_locks` is idempotent: after a crash between P2 and P3, running it
  (or the same change again) brings the locks level with the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from vault import ledger
from vault.db import unit_of_work
from vault.errors import InvalidInput, NotFound, Unavailable, VaultError
from vault.models import Camera, RetentionPolicy, Segment, SegmentState
from vault.store.fs import retention_instant
from vault.timerange import as_utc

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from vault.lifecycle import VaultContext

__all__ = [
    "LockSync",
    "PolicyChange",
    "PolicyChangeResult",
    "apply_change",
    "change_policy",
    "list_policies",
    "plan_change",
    "sync_retention_locks",
]

log = logging.getLogger(__name__)

_PAGE = 1000
MIN_REASON_CHARS = 10


@dataclass(frozen=True)
class PolicyChange:
    """A validated change of one policy's days, not yet written."""

    policy_id: str
    old_days: int
    new_days: int
    min_days: int
    max_days: int
    reason: str
    cameras: tuple[str, ...]

    @property
    def target(self) -> str:
        return f"retention-policy:{self.policy_id}"

    @property
    def details(self) -> dict[str, Any]:
        return {
            "policy": self.policy_id,
            "old_days": self.old_days,
            "new_days": self.new_days,
            "min_days": self.min_days,
            "max_days": self.max_days,
            "cameras": list(self.cameras),
            "reason_given": self.reason,
        }


@dataclass
class LockSync:
    """What a retention-lock sync did to the store."""

    extended: int = 0  # locks moved to a later deadline
    kept: int = 0  # the store keeps a later lock than the catalog deadline (policy shortened)
    unchanged: int = 0
    missing: int = 0  # the catalog names the object, the store does not have it
    failed: list[str] = field(default_factory=list)
    complete: bool = True  # False when the store became unavailable part-way

    def to_dict(self) -> dict[str, Any]:
        return {
            "extended": self.extended,
            "kept": self.kept,
            "unchanged": self.unchanged,
            "missing": self.missing,
            "failed": len(self.failed),
            "failed_keys": self.failed[:20],
            "complete": self.complete,
        }


@dataclass
class PolicyChangeResult:
    change: PolicyChange
    segments: int  # stored segments whose retention_until was recomputed
    locks: LockSync | None = None  # None until the store has been synced

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.change.details,
            "segments": self.segments,
            "locks": self.locks.to_dict() if self.locks is not None else None,
        }


def list_policies(session: Session) -> list[tuple[RetentionPolicy, list[Camera]]]:
    """Every policy with the cameras on it."""
    cameras: dict[str, list[Camera]] = {}
    for camera in session.exec(select(Camera).order_by(col(Camera.id))):
        cameras.setdefault(camera.retention_policy_id, []).append(camera)
    policies = session.exec(select(RetentionPolicy).order_by(col(RetentionPolicy.id)))
    return [(p, cameras.get(p.id, [])) for p in policies]


def plan_change(session: Session, policy_id: str, days: int, reason: str) -> PolicyChange:
    """Validate a change (P1); raise :class:`InvalidInput` or :class:`NotFound`."""
    policy = session.get(RetentionPolicy, policy_id)
    if policy is None:
        raise NotFound(f"no retention policy {policy_id!r}")
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidInput("days must be a whole number")
    if days <= 0:
        raise InvalidInput(f"days must be positive (got {days})")
    if days < policy.min_days:
        raise InvalidInput(
            f"days={days} is below the minimum of policy {policy_id!r} ({policy.min_days} days"
            f"{': ' + policy.basis if policy.basis else ''})"
        )
    if days > policy.max_days:
        raise InvalidInput(
            f"days={days} is above the maximum of policy {policy_id!r} ({policy.max_days} days)"
        )
    why = reason.strip()
    if len(why) < MIN_REASON_CHARS:
        raise InvalidInput(f"reason must say why, in at least {MIN_REASON_CHARS} characters")
    if len(why) > 2000:
        raise InvalidInput("reason is longer than 2000 characters")
    cameras = tuple(
        c.id
        for c in session.exec(
            select(Camera).where(Camera.retention_policy_id == policy_id).order_by(col(Camera.id))
        )
    )
    return PolicyChange(
        policy_id=policy_id,
        old_days=policy.days,
        new_days=days,
        min_days=policy.min_days,
        max_days=policy.max_days,
        reason=why,
        cameras=cameras,
    )


def _stored_pages(
    engine_or_session: Session | Engine, cameras: tuple[str, ...]
) -> Iterator[list[Any]]:
    """Stored segments of ``cameras`` as (id, end, retention_until, key, thumb key), paged."""
    after = ""
    while True:
        stmt = (
            sa_select(
                col(Segment.id), col(Segment.end), col(Segment.retention_until),
                col(Segment.object_key), col(Segment.thumb_key),
            )
            .where(col(Segment.camera_id).in_(cameras))
            .where(col(Segment.state) == SegmentState.STORED.value)
            .where(col(Segment.id) > after)
            .order_by(col(Segment.id))
            .limit(_PAGE)
        )
        if isinstance(engine_or_session, Session):
            rows = list(engine_or_session.execute(stmt))
        else:
            with unit_of_work(engine_or_session) as session:
                rows = list(session.execute(stmt))
        if rows:
            yield rows
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


def apply_change(session: Session, change: PolicyChange) -> int:
    """Write the new days and every stored segment's new deadline in the caller's transaction
    (P2). Returns how many segments were recomputed."""
    policy = session.get(RetentionPolicy, change.policy_id)
    if policy is None:
        raise NotFound(f"no retention policy {change.policy_id!r}")
    policy.days = change.new_days
    session.add(policy)
    session.flush()
    if not change.cameras:
        return 0
    table = Segment.__table__  # type: ignore[attr-defined]
    stmt = (
        table.update()
        .where(table.c.id == bindparam("b_id"))
        .values(retention_until=bindparam("b_until", type_=table.c.retention_until.type))
    )
    days = timedelta(days=change.new_days)
    count = 0
    for page in _stored_pages(session, change.cameras):
        session.execute(
            stmt, [{"b_id": seg_id, "b_until": as_utc(end) + days} for seg_id, end, *_ in page]
        )
        count += len(page)
    return count


def sync_retention_locks(ctx: VaultContext, cameras: tuple[str, ...]) -> LockSync:
    """Extend store locks to the catalog's ``retention_until`` where it is later (P3, P4).

    Objects are read with ``head`` first, so running this again changes nothing.
    """
    sync = LockSync()
    for page in _stored_pages(ctx.engine, cameras):
        for _seg_id, _end, until, key, thumb in page:
            deadline = retention_instant(until)
            for object_key in (key, thumb):
                if object_key is None:
                    continue
                if not _extend(ctx, object_key, deadline, sync):
                    return sync
    log.info(
        "retention locks synced cameras=%s extended=%d kept=%d unchanged=%d missing=%d failed=%d",
        ",".join(cameras), sync.extended, sync.kept, sync.unchanged, sync.missing,
        len(sync.failed),
    )
    return sync


def _extend(ctx: VaultContext, key: str, deadline: datetime, sync: LockSync) -> bool:
    """One object's lock to at least ``deadline``; False if the store is unavailable."""
    try:
        info = ctx.store.head(key)
        if info is None:
            sync.missing += 1
            return True
        if info.retain_until is not None and info.retain_until > deadline:
            sync.kept += 1
            return True
        if info.retain_until == deadline:
            sync.unchanged += 1
            return True
        ctx.store.set_retention(key, deadline)
    except NotFound:
        sync.missing += 1
        return True
    except Unavailable as exc:
        log.warning("retention lock sync stopped: store unavailable key=%s error=%s",
                    key, exc.message)
        sync.failed.append(key)
        sync.complete = False
        return False
    except VaultError as exc:
        log.warning("retention lock not extended key=%s error=%s", key, exc.message)
        sync.failed.append(key)
        return True
    sync.extended += 1
    return True


def change_policy(
    ctx: VaultContext,
    policy_id: str,
    days: int,
    reason: str,
    actor: str,
    now: datetime,
    *,
    role: str = "privacy_officer",
    client: str = "",
    record: Callable[[PolicyChange], None] | None = None,
    sync_store: bool = True,
) -> PolicyChangeResult:
    """Change a policy's days, recompute stored footage's deadlines, extend the store's locks.

    Bad input raises before anything is written (P1). ``record``, when given, must make the
    change's audit event durable (the API passes its ledger writer) and is called after
    validation, before any write; without it the event is appended to the ledger in the same
    transaction as the change. With ``sync_store=False`` the caller runs
    :func:`sync_retention_locks` itself (the API does, after the response).
    """
    now = as_utc(now)
    with unit_of_work(ctx.engine) as session:
        change = plan_change(session, policy_id, days, reason)
        if record is not None:
            record(change)
        segments = apply_change(session, change)
        if record is None:
            ledger.append(
                session,
                at=now,
                actor=actor,
                role=role,
                action="retention.change",
                target=change.target,
                decision="done",
                reason=change.reason[:1000],
                client=client,
                details={**change.details, "segments": segments},
            )
    log.info(
        "retention policy changed policy=%s days=%d->%d segments=%d actor=%s",
        policy_id, change.old_days, change.new_days, segments, actor,
    )
    result = PolicyChangeResult(change, segments)
    if sync_store:
        result.locks = sync_retention_locks(ctx, change.cameras)
    return result
