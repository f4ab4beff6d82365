"""The scheduler's jobs: plain functions over a :class:`VaultContext` (DESIGN §8, §9).

Each job does one thing, is safe to run again after a crash at any point, reads "now" from the
injected clock, and leaves an account of itself in the audit ledger as ``system:scheduler``
(I10). None of them knows about APScheduler or the lease: the runner decides *when* and
*whether*; these decide *what*.

- :func:`nightly_purge` — everything due as of now goes (``vault.purge.run_purge``).
- :func:`ledger_checkpoint` — sign and anchor the ledger head in the store.
- :func:`integrity_sweep` — decrypt and re-hash a random sample of stored segments.
- :func:`expire_grants_and_holds` — announce grants that ran out; release expired security
  holds (``vault.holds.run_hold_expiry``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import exists, func, literal, or_
from sqlmodel import col, select

from vault.checkpoints import write_checkpoint
from vault.db import unit_of_work
from vault.errors import IntegrityError, NotFound, Unavailable
from vault.holds import StoreSync, run_hold_expiry
from vault.ledger import EventDraft
from vault.lifecycle import VaultContext, read_segment
from vault.models import AuditCheckpoint, AuditEvent, Grant, Segment, SegmentState
from vault.purge import PurgeReport, run_purge
from vault.signing import SigningKey
from vault.timerange import as_utc

__all__ = [
    "ACTOR",
    "CHECKPOINT_ACTION",
    "PURGE_ACTION",
    "ROLE",
    "GRANT_EXPIRED_ACTION",
    "INTEGRITY_FAILED_ACTION",
    "SWEEP_ACTION",
    "EventSink",
    "ExpiryReport",
    "SweepReport",
    "expire_grants_and_holds",
    "integrity_sweep",
    "ledger_checkpoint",
    "nightly_purge",
]

log = logging.getLogger(__name__)

ACTOR = "system:scheduler"
ROLE = "system"
PURGE_ACTION = "scheduler.purge"
CHECKPOINT_ACTION = "ledger.checkpoint"
SWEEP_ACTION = "integrity.sweep"
INTEGRITY_FAILED_ACTION = "integrity.failed"
GRANT_EXPIRED_ACTION = "grant.expired"

# Grants are announced in order of expiry; the last announced one's expiry is the watermark.
# Candidates reach back this far before it, so a grant whose row committed late (a slow
# transaction, a host clock behind ours) is still announced; the ledger lookup keeps it once.
GRANT_LOOKBACK = timedelta(days=1)
GRANTS_PER_RUN = 1000
_EVENTS_PER_WRITE = 100
# How many failed segment ids the sweep's summary event lists (each also has its own event).
_SUMMARY_IDS = 100


class EventSink(Protocol):
    """Where jobs write their ledger events; :class:`vault.ledger.LedgerWriter` is one."""

    def write_many(self, drafts: Sequence[EventDraft]) -> list[int]: ...


def _event(
    at: datetime,
    action: str,
    target: str,
    decision: str,
    *,
    reason: str = "",
    purpose: str = "",
    details: Mapping[str, Any] | None = None,
) -> EventDraft:
    return EventDraft(
        at=at,
        actor=ACTOR,
        role=ROLE,
        action=action,
        target=target,
        decision=decision,
        purpose=purpose,
        reason=reason[:1000],
        details=details or {},
    )


# -- purge -------------------------------------------------------------------------------------


def nightly_purge(ctx: VaultContext, *, signing_key: SigningKey, audit: EventSink) -> PurgeReport:
    """Purge everything due as of now (resuming rows a crash left ``purging``); idempotent.

    The purge writes its own per-batch events and certificate; this adds who started it.
    """
    report = run_purge(ctx, signing_key=signing_key, trigger="scheduler")
    audit.write_many(
        [
            _event(
                ctx.clock.now(),
                PURGE_ACTION,
                f"purge-run:{report.run_id}",
                "done",
                details=_purge_details(report),
            )
        ]
    )
    return report


def _purge_details(report: PurgeReport) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "state": report.state,
        "as_of": report.as_of.isoformat(),
        "purged": report.purged,
        "purged_bytes": report.purged_bytes,
        "resumed": report.resumed,
        "held_back": report.held_back,
        "refused": len(report.failed),
        "recovered_runs": list(report.recovered_runs),
        "certificate_key": report.certificate_key,
        "certificate_sha256": report.certificate_sha256,
    }


# -- ledger checkpoint -------------------------------------------------------------------------


def ledger_checkpoint(
    ctx: VaultContext, *, signing_key: SigningKey, audit: EventSink
) -> AuditCheckpoint | None:
    """Anchor the ledger head in the store (signed, locked); None when nothing is new.

    The job's own ``ledger.checkpoint`` event follows the checkpoint it reports, so it is the
    one event a checkpoint never covers at once: when it is the only event after the latest
    checkpoint, there is nothing new to anchor. (Otherwise every checkpoint would make the next
    one necessary, and an idle vault would write two entries every few minutes forever.) It is
    anchored with the next real activity.
    """
    with unit_of_work(ctx.engine) as session:
        head = session.exec(
            select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)
        ).first()
        if head is None or session.get(AuditCheckpoint, head.seq) is not None:
            return None
        if (
            head.action == CHECKPOINT_ACTION
            and head.actor == ACTOR
            and session.get(AuditCheckpoint, head.seq - 1) is not None
        ):
            return None
    row = write_checkpoint(ctx.engine, ctx.store, signing_key, ctx.clock)
    if row is None:
        return None
    audit.write_many(
        [
            _event(
                ctx.clock.now(),
                CHECKPOINT_ACTION,
                f"ledger:{row.seq}",
                "done",
                details={
                    "seq": row.seq,
                    "hash": row.hash,
                    "key_id": row.key_id,
                    "object_key": row.object_key,
                },
            )
        ]
    )
    return row


# -- integrity sweep ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepReport:
    sampled: int
    verified: int
    bytes_verified: int
    failed: tuple[str, ...] = ()  # segment ids
    skipped: int = 0  # purged between sampling and reading
    incomplete: str = ""  # why the sweep stopped early (store unreachable), if it did

    @property
    def ok(self) -> bool:
        return not self.failed and not self.incomplete


def _sample(ctx: VaultContext, size: int) -> list[str]:
    # ORDER BY random() reads every stored row's id once a day: seconds at 10 M segments,
    # no index needed, and a uniform sample on both SQLite and PostgreSQL.
    with unit_of_work(ctx.engine) as session:
        ids = session.exec(
            select(Segment.id)
            .where(Segment.state == SegmentState.STORED)
            .order_by(func.random())
            .limit(size)
        ).all()
    return list(ids)


def _current(ctx: VaultContext, segment_id: str) -> Segment | None:
    """The segment's row if it is still stored (the purge may have taken it meanwhile)."""
    with unit_of_work(ctx.engine) as session:
        segment = session.get(Segment, segment_id)
    if segment is None or segment.state != SegmentState.STORED or segment.wrapped_dek is None:
        return None
    return segment


def integrity_sweep(ctx: VaultContext, *, sample: int, audit: EventSink) -> SweepReport:
    """Decrypt and re-hash a random sample of stored segments (I6); report every failure.

    A segment fails when its object is missing, does not authenticate, or its plaintext hash
    differs from the catalog's: each failure is an ERROR log line and an ``integrity.failed``
    event, and the sweep goes on. One ``integrity.sweep`` event sums it up. An unreachable store
    stops the sweep early ("incomplete"): that is an outage, not evidence of tampering.
    """
    ids = _sample(ctx, sample)
    verified = skipped = bytes_verified = 0
    failed: list[str] = []
    incomplete = ""
    for segment_id in ids:
        segment = _current(ctx, segment_id)
        if segment is None:
            skipped += 1
            continue
        try:
            plaintext = read_segment(ctx, segment)
        except (IntegrityError, NotFound) as exc:
            if isinstance(exc, NotFound) and _current(ctx, segment_id) is None:
                skipped += 1  # purged while we read it
                continue
            failed.append(segment_id)
            log.error(
                "integrity sweep: segment %s of camera %s failed: %s (object %s)",
                segment.id,
                segment.camera_id,
                exc.message,
                segment.object_key,
            )
            audit.write_many(
                [
                    _event(
                        ctx.clock.now(),
                        INTEGRITY_FAILED_ACTION,
                        f"segment:{segment.id}",
                        "failed",
                        reason=exc.message,
                        purpose=segment.purpose,
                        details={
                            "camera": segment.camera_id,
                            "object_key": segment.object_key,
                            "sha256": segment.sha256,
                            "kind": exc.kind.value,
                        },
                    )
                ]
            )
            continue
        except Unavailable as exc:
            incomplete = exc.message
            log.error("integrity sweep stopped early: %s", exc.message)
            break
        verified += 1
        bytes_verified += len(plaintext)
    report = SweepReport(
        sampled=len(ids),
        verified=verified,
        bytes_verified=bytes_verified,
        failed=tuple(failed),
        skipped=skipped,
        incomplete=incomplete,
    )
    decision = "failed" if failed else ("incomplete" if incomplete else "ok")
    audit.write_many(
        [
            _event(
                ctx.clock.now(),
                SWEEP_ACTION,
                "segments",
                decision,
                reason=incomplete,
                details={
                    "sampled": report.sampled,
                    "verified": report.verified,
                    "bytes_verified": report.bytes_verified,
                    "failed": len(report.failed),
                    "failed_segments": list(report.failed[:_SUMMARY_IDS]),
                    "skipped": report.skipped,
                },
            )
        ]
    )
    log.info(
        "integrity sweep sampled=%d verified=%d failed=%d skipped=%d bytes=%d%s",
        report.sampled,
        report.verified,
        len(report.failed),
        report.skipped,
        report.bytes_verified,
        " (incomplete)" if incomplete else "",
    )
    return report


# -- expiry ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    grants: tuple[str, ...] = field(default_factory=tuple)  # grant ids announced as expired
    holds: tuple[str, ...] = field(default_factory=tuple)  # security holds released
    store: StoreSync = field(default_factory=StoreSync)  # their objects' legal holds


def _grant_watermark(ctx: VaultContext) -> datetime | None:
    """Expiry of the last grant announced (the events are written in order of expiry)."""
    with unit_of_work(ctx.engine) as session:
        details = session.exec(
            select(AuditEvent.details)
            .where(AuditEvent.action == GRANT_EXPIRED_ACTION)
            .where(AuditEvent.actor == ACTOR)
            .order_by(col(AuditEvent.seq).desc())
            .limit(1)
        ).first()
    if details is None:
        return None
    value = json.loads(details).get("expires_at")
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _expired_grants(ctx: VaultContext, now: datetime) -> list[Grant]:
    """Grants that ran out (not revoked before) and have no ``grant.expired`` event yet."""
    watermark = _grant_watermark(ctx)
    announced = exists().where(
        col(AuditEvent.action) == GRANT_EXPIRED_ACTION,
        col(AuditEvent.target) == literal("grant:") + col(Grant.id),
    )
    stmt = (
        select(Grant)
        .where(col(Grant.expires_at) <= now)
        .where(or_(col(Grant.revoked_at).is_(None), col(Grant.revoked_at) > col(Grant.expires_at)))
        .where(~announced)
        .order_by(col(Grant.expires_at), col(Grant.id))
        .limit(GRANTS_PER_RUN)
    )
    if watermark is not None:
        stmt = stmt.where(col(Grant.expires_at) >= watermark - GRANT_LOOKBACK)
    with unit_of_work(ctx.engine) as session:
        return list(session.exec(stmt))


def _announce_grants(ctx: VaultContext, now: datetime, audit: EventSink) -> list[str]:
    grants = _expired_grants(ctx, now)
    drafts = [
        _event(
            now,
            GRANT_EXPIRED_ACTION,
            f"grant:{grant.id}",
            "done",
            purpose=grant.purpose,
            details={
                "holder": grant.holder,
                "request_id": grant.request_id,
                "cameras": json.loads(grant.cameras),
                "granted_by": grant.granted_by,
                "expires_at": as_utc(grant.expires_at).isoformat(),
            },
        )
        for grant in grants
    ]
    for start in range(0, len(drafts), _EVENTS_PER_WRITE):
        audit.write_many(drafts[start : start + _EVENTS_PER_WRITE])
    for grant in grants:
        log.info("grant %s of %s expired at %s", grant.id, grant.holder, grant.expires_at)
    return [grant.id for grant in grants]


def _release_holds(ctx: VaultContext) -> tuple[list[str], StoreSync]:
    """Release expired security holds (rows and their ``holds.expire`` events commit together,
    written by :mod:`vault.holds`), then take the store's legal hold off what they covered."""
    holds, sync = run_hold_expiry(ctx)
    if not sync.complete or sync.failed:
        # The catalog is right (holds released); the store catches up at the next reconcile.
        log.warning(
            "security hold expiry: store legal holds not all cleared (failed=%d complete=%s)",
            len(sync.failed),
            sync.complete,
        )
    return [hold.id for hold in holds], sync


def expire_grants_and_holds(ctx: VaultContext, *, audit: EventSink) -> ExpiryReport:
    """Announce every grant past ``expires_at`` once (``grant.expired``); release expired holds.

    A grant stops working at ``expires_at`` whatever this job does (the policy checks it on
    every request); the event records, once, that it ended. Announced grants are remembered by
    their events: a grant is announced if the ledger has a ``grant.expired`` event naming it,
    so a crash between events and a rerun never announces one twice.
    """
    now = as_utc(ctx.clock.now(), field="clock")
    grants = _announce_grants(ctx, now, audit)
    holds, sync = _release_holds(ctx)
    return ExpiryReport(grants=tuple(grants), holds=tuple(holds), store=sync)
