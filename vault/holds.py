"""Holds (DESIGN §9): orders that suspend purging of cameras x range. Holds win over retention.

This module is the service side; the pure scope type lives in :mod:`vault.retention`.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlmodel import Session, col, or_, select

from vault.models import Hold
from vault.retention import HoldScope
from vault.timerange import TimeRange, as_utc

__all__ = ["active_holds", "scope_of"]


def scope_of(hold: Hold) -> HoldScope:
    return HoldScope(
        id=hold.id,
        kind=hold.kind,
        cameras=frozenset(json.loads(hold.cameras)),
        window=TimeRange(hold.start, hold.end),
    )


def active_holds(session: Session, now: datetime) -> list[HoldScope]:
    """Holds in force at ``now``: not released and, for expiring holds, not yet expired."""
    now = as_utc(now)
    stmt = (
        select(Hold)
        .where(col(Hold.released_at).is_(None))
        .where(or_(col(Hold.expires_at).is_(None), col(Hold.expires_at) > now))
        .order_by(col(Hold.placed_at))
    )
    return [scope_of(h) for h in session.exec(stmt)]
