"""``cctv-vault check``: verify that catalog and store agree (I6).

* every ``stored`` row has its object (and thumbnail), and — unless ``quick`` — the object
  decrypts, authenticates and hashes to the row's plaintext SHA-256;
* every object under ``segments/`` and ``thumbs/`` has a row or a tombstone; an object whose
  segment is still pending in the spool is reported as pending, not as a violation;
* a ``purged`` row has a verified tombstone and no wrapped data key left, and no object a
  tombstone names is still in the store (docs/design/purge.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from sqlmodel import Session, col, or_, select

from vault.db import unit_of_work
from vault.errors import IntegrityError, NotFound
from vault.lifecycle import VaultContext, read_segment, read_thumbnail
from vault.models import Segment, SegmentState, Tombstone
from vault.store.base import UnknownLock

__all__ = ["CheckReport", "Violation", "purged_violations", "run_check"]

_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # missing-object | integrity | orphan-object | purged-object-present | purge-unproven
    target: str
    detail: str


@dataclass(slots=True)
class CheckReport:
    segments_checked: int = 0
    objects_listed: int = 0
    decrypted: int = 0
    pending: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "segments_checked": self.segments_checked,
                "objects_listed": self.objects_listed,
                "decrypted": self.decrypted,
                "pending": self.pending,
                "violations": [asdict(v) for v in self.violations],
            },
            sort_keys=True,
        )


def _stored_segments(ctx: VaultContext) -> Iterable[Segment]:
    last_id = ""
    while True:
        with unit_of_work(ctx.engine) as session:
            batch = list(
                session.exec(
                    select(Segment)
                    .where(Segment.state == SegmentState.STORED)
                    .where(col(Segment.id) > last_id)
                    .order_by(col(Segment.id))
                    .limit(_BATCH)
                )
            )
        if not batch:
            return
        yield from batch
        last_id = batch[-1].id


def purged_violations(session: Session) -> list[Violation]:
    """Purged rows without a verified tombstone, or with a wrapped data key left (the
    cryptographic erase did not happen)."""
    stmt = (
        select(Segment.id)
        .outerjoin(Tombstone, col(Tombstone.segment_id) == col(Segment.id))
        .where(col(Segment.state) == SegmentState.PURGED)
        .where(
            or_(
                col(Tombstone.segment_id).is_(None),
                col(Tombstone.verified).is_(False),
                col(Segment.wrapped_dek).is_not(None),
                col(Segment.thumb_wrapped_dek).is_not(None),
            )
        )
        .order_by(col(Segment.id))
    )
    return [
        Violation("purge-unproven", f"segment:{segment_id}",
                  "purged without a verified tombstone, or a wrapped data key remains")
        for segment_id in session.exec(stmt)
    ]


def run_check(
    ctx: VaultContext, *, quick: bool = False, pending_ids: Iterable[str] = ()
) -> CheckReport:
    report = CheckReport()
    known_keys: set[str] = set()
    for segment in _stored_segments(ctx):
        report.segments_checked += 1
        known_keys.add(segment.object_key)
        if segment.thumb_key:
            known_keys.add(segment.thumb_key)
        for key in filter(None, (segment.object_key, segment.thumb_key)):
            try:
                present = ctx.store.head(key) is not None
            except UnknownLock as exc:  # reported, and the check goes on to the next object
                report.violations.append(Violation("lock-unknown", key, exc.message))
                continue
            if not present:
                report.violations.append(
                    Violation("missing-object", key, f"segment {segment.id} has no object")
                )
        if quick:
            continue
        try:
            read_segment(ctx, segment)
            if segment.thumb_key:
                read_thumbnail(ctx, segment)
            report.decrypted += 1
        except NotFound:
            pass  # already reported as missing
        except IntegrityError as exc:
            report.violations.append(Violation("integrity", segment.object_key, exc.message))

    with unit_of_work(ctx.engine) as session:
        for seg in session.exec(
            select(Segment).where(col(Segment.state).in_([SegmentState.PURGING]))
        ):
            known_keys.add(seg.object_key)
            if seg.thumb_key:
                known_keys.add(seg.thumb_key)
        tombstoned: set[str] = set()
        for stone in session.exec(select(Tombstone)):
            tombstoned.update(filter(None, (stone.object_key, stone.thumb_key)))
        report.violations.extend(purged_violations(session))
    pending = set(pending_ids)
    for prefix in ("segments/", "thumbs/"):
        for key in ctx.store.list(prefix):
            report.objects_listed += 1
            if key in known_keys:
                continue
            if key in tombstoned:
                report.violations.append(
                    Violation("purged-object-present", key, "a tombstone says it was deleted")
                )
                continue
            object_id = key.rsplit("/", 1)[-1]
            if object_id in pending:
                report.pending.append(key)
                continue
            if prefix == "thumbs/" and f"segments/{key[len('thumbs/') :]}" in tombstoned:
                report.violations.append(
                    Violation("purged-object-present", key, "its segment has a tombstone")
                )
                continue
            report.violations.append(
                Violation("orphan-object", key, "object has no catalog row and no tombstone")
            )
    return report
