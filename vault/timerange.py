"""One time model (I8): instants are timezone-aware UTC, intervals are half-open [start, end).

Wall time (``datetime``) and media time (stream ticks, seconds of media) have different names
everywhere in the code: ``start``/``end``/``received`` are wall instants; ``media_*`` are media.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from vault.errors import InvalidInput

__all__ = ["Clock", "FixedClock", "SystemClock", "TimeRange", "as_utc", "parse_instant", "utcnow"]


def as_utc(value: datetime, *, field: str = "instant") -> datetime:
    """Return ``value`` in UTC; a naive datetime is refused, never guessed."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidInput(f"{field} must carry a timezone (got naive {value.isoformat()})")
    return value.astimezone(UTC)


def parse_instant(text: str, *, field: str = "instant") -> datetime:
    """Parse an ISO 8601 instant with an explicit offset (``Z`` or ``+09:00``)."""
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"{field} is not an ISO 8601 instant: {text!r}") from exc
    return as_utc(parsed, field=field)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open UTC interval ``[start, end)``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start, field="start"))
        object.__setattr__(self, "end", as_utc(self.end, field="end"))
        if self.end < self.start:
            raise InvalidInput(
                f"end {self.end.isoformat()} is before start {self.start.isoformat()}"
            )

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def overlaps(self, other: TimeRange) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, instant: datetime) -> bool:
        instant = as_utc(instant)
        return self.start <= instant < self.end


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class FixedClock:
    """A clock tests set and advance by hand."""

    def __init__(self, at: datetime) -> None:
        self._at = as_utc(at)

    def now(self) -> datetime:
        return self._at

    def advance(self, delta: timedelta) -> None:
        self._at += delta

    def set(self, at: datetime) -> None:
        self._at = as_utc(at)


ClockFn = Callable[[], datetime]
