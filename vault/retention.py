"""Retention: the pure side of purging (DESIGN §9). No database, no store, no clock.

``HoldScope`` is what a hold covers, as the purge plan and the store's legal-hold sync see it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vault.timerange import TimeRange

__all__ = ["HoldScope"]


@dataclass(frozen=True, slots=True)
class HoldScope:
    """An active hold: cameras x a half-open wall-time range. Holds win over retention (I5)."""

    id: str
    kind: str  # "legal" | "security"
    cameras: frozenset[str]
    window: TimeRange

    def covers(self, camera_id: str, span: TimeRange) -> bool:
        """True if footage of ``camera_id`` over ``span`` falls (even partly) under this hold."""
        return camera_id in self.cameras and self.window.overlaps(span)
