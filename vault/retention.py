"""Retention: the pure side of purging (DESIGN §9). No database, no store, no clock.

``HoldScope`` is what a hold covers, as the purge plan and the store's legal-hold sync see it.
:func:`plan` decides, for segments whose retention has ended, which go (in batches) and which
holds keep which back. The executor (:mod:`vault.purge`) only carries the decision out.

Rules of the plan (docs/design/purge.md):

- R1 (I5, "not before"). A segment whose ``retention_until`` is after ``now`` is never planned
  for deletion, whatever the caller passes in; it is returned as ``not_due``.
- R2 (holds win). A segment any hold covers — even by one instant of its half-open span — is
  kept back, and counted under *every* hold that covers it.
- R3. Everything else that is due goes, in batches of at most ``batch_size`` (<= 1000, the
  store's delete limit), in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from vault.errors import InvalidInput
from vault.timerange import TimeRange, as_utc

__all__ = ["MAX_BATCH", "DueSegment", "HeldBack", "HoldScope", "PurgePlan", "plan"]

MAX_BATCH = 1000  # the object store's delete_many limit (vault.store.base.MAX_DELETE_BATCH)


@dataclass(frozen=True, slots=True)
class HoldScope:
    """An active hold: cameras x a half-open wall-time range. Holds win over retention (I5)."""

    id: str
    kind: str  # "legal" | "security"
    cameras: frozenset[str]
    window: TimeRange

    def covers(self, camera_id: str, span: TimeRange) -> bool:
        """True if footage of ``camera_id`` over ``span`` falls (even partly) under this hold."""
        if camera_id not in self.cameras:
            return False
        if span.start == span.end:
            # An empty span overlaps nothing; an instant inside the window is still held.
            return self.window.contains(span.start)
        return self.window.overlaps(span)


@dataclass(frozen=True, slots=True)
class DueSegment:
    """A stored segment as the plan sees it: who, when, until when, how big."""

    id: str
    camera_id: str
    span: TimeRange
    retention_until: datetime
    bytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "retention_until", as_utc(self.retention_until, field="retention_until")
        )


@dataclass(frozen=True, slots=True)
class HeldBack:
    """The due segments one hold keeps back."""

    hold: HoldScope
    segments: tuple[DueSegment, ...]

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)


@dataclass(frozen=True, slots=True)
class PurgePlan:
    now: datetime
    batches: tuple[tuple[DueSegment, ...], ...]
    held: tuple[HeldBack, ...]  # holds that keep at least one segment back, in the given order
    not_due: tuple[DueSegment, ...]  # handed in, but retention_until > now: kept (R1)

    @property
    def to_purge(self) -> tuple[DueSegment, ...]:
        return tuple(s for batch in self.batches for s in batch)

    @property
    def held_ids(self) -> frozenset[str]:
        """Distinct segments kept back (one segment under two holds counts once)."""
        return frozenset(s.id for h in self.held for s in h.segments)


def plan(
    due: Sequence[DueSegment],
    holds: Sequence[HoldScope],
    now: datetime,
    batch_size: int = MAX_BATCH,
) -> PurgePlan:
    """Decide what goes: due segments not covered by any hold, in batches (rules R1-R3)."""
    now = as_utc(now, field="now")
    if not 1 <= batch_size <= MAX_BATCH:
        raise InvalidInput(f"batch_size must be between 1 and {MAX_BATCH} (got {batch_size})")
    seen: set[str] = set()
    going: list[DueSegment] = []
    not_due: list[DueSegment] = []
    kept: dict[str, list[DueSegment]] = {hold.id: [] for hold in holds}
    for segment in due:
        if segment.id in seen:
            raise InvalidInput(f"segment {segment.id} is listed twice")
        seen.add(segment.id)
        if segment.retention_until > now:
            not_due.append(segment)
            continue
        covering = [h for h in holds if h.covers(segment.camera_id, segment.span)]
        for hold in covering:
            kept[hold.id].append(segment)
        if not covering:
            going.append(segment)
    batches = tuple(
        tuple(going[i : i + batch_size]) for i in range(0, len(going), batch_size)
    )
    held = tuple(HeldBack(h, tuple(kept[h.id])) for h in holds if kept[h.id])
    return PurgePlan(now=now, batches=batches, held=held, not_due=tuple(not_due))
