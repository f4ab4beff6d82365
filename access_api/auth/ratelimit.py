"""Sliding-window limits on failed logins, per client address and per user name.

Kept in the process: a replica forgets on restart, which only ever loosens the limit for a few
minutes; the account lockout that matters (consecutive failures of one user) lives in the
catalog and survives restarts and replicas.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from datetime import datetime, timedelta

__all__ = ["FailureWindow"]


class FailureWindow:
    """At most ``limit`` failures per key within ``window``; counts only what is recorded."""

    def __init__(self, limit: int, window: timedelta, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._failures: dict[str, deque[datetime]] = {}
        self._lock = threading.Lock()

    def _trim(self, key: str, now: datetime) -> deque[datetime]:
        times = self._failures.setdefault(key, deque())
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return times

    def retry_after(self, key: str, now: datetime) -> int:
        """Seconds until ``key`` may try again; 0 if it may try now."""
        with self._lock:
            times = self._trim(key, now)
            if len(times) < self.limit:
                return 0
            oldest_that_counts = times[len(times) - self.limit]
            return max(1, math.ceil((oldest_that_counts + self.window - now).total_seconds()))

    def record_failure(self, key: str, now: datetime) -> None:
        with self._lock:
            if len(self._failures) >= self._max_keys and key not in self._failures:
                # Bounded memory under a spray of client addresses: drop the stalest keys.
                for stale in list(self._failures)[: self._max_keys // 10]:
                    del self._failures[stale]
            self._trim(key, now).append(now)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
