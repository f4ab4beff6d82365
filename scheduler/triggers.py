"""When jobs run: cron expressions, the last scheduled instant, and whether a run is owed.

Pure apart from APScheduler's trigger arithmetic: no database, no clock of its own.

Two traps of APScheduler 3.x this module closes:

- ``CronTrigger.from_crontab`` reads weekday numbers with 0 = Monday (crontab: 0 = Sunday), so
  ``0 3 * * 0`` would run on Mondays. :func:`cron_trigger` translates weekday numbers to names
  the way crontab means them.
- A memory job store forgets, across a restart, that a run was missed: a job added after the
  scheduled instant simply waits for the next one. :func:`previous_fire_time` and :func:`owed`
  let the runner decide from the catalog whether a run is owed and start it once.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

from vault.errors import ConfigError
from vault.timerange import as_utc

__all__ = ["cron_trigger", "owed", "previous_fire_time", "resolve_timezone"]

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_ITEM = re.compile(r"(?P<first>\*|\w+)(?:-(?P<last>\w+))?(?:/(?P<step>\d+))?")
# How far back to look for the last scheduled instant; a cron that fires less often than this
# (e.g. only on 29 February) is treated as never having fired.
_LOOKBACK_LIMIT = timedelta(days=4 * 366 + 1)


def resolve_timezone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; :class:`ConfigError` for anything else (no "local")."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown IANA time zone {name!r}") from exc


def _weekday_name(token: str) -> str:
    if token.isdigit():
        number = int(token)
        if not 0 <= number <= 7:
            raise ConfigError(f"weekday {number} is out of range 0-7 (0 and 7 are Sunday)")
        return _WEEKDAYS[number]
    return token.lower()


def _weekday_field(value: str) -> str:
    """A crontab weekday field in APScheduler's terms (names, so no numbering can be misread)."""
    items: list[str] = []
    for item in value.split(","):
        match = _WEEKDAY_ITEM.fullmatch(item)
        if match is None:
            raise ConfigError(f"cannot read weekday item {item!r}")
        first, last, step = match["first"], match["last"], match["step"]
        if step is not None and (first != "*" or last is not None):
            # A stepped weekday range counts from Sunday in crontab, from Monday here: refuse
            # rather than guess.
            raise ConfigError(f"weekday item {item!r}: list the days by name instead")
        if step is not None:
            if int(step) != 1:
                raise ConfigError(f"weekday item {item!r}: list the days by name instead")
            items.append("*")
            continue
        if first == "*":
            items.append("*")
            continue
        if last is None:
            items.append(_weekday_name(first))
            continue
        if first == "0" or _weekday_name(first) == "sun":
            # crontab's 0-3 is Sunday to Wednesday; APScheduler's week starts on Monday.
            items.append("sun")
            if last not in ("0", "7") and _weekday_name(last) != "sun":
                items.append(f"mon-{_weekday_name(last)}")
            continue
        items.append(f"{_weekday_name(first)}-{_weekday_name(last)}")
    return ",".join(items)


def cron_trigger(expr: str, timezone: ZoneInfo) -> Any:
    """A ``CronTrigger`` for a crontab expression read in ``timezone``.

    Five fields (minute hour day month weekday, as crontab reads them: weekday 0 or 7 is Sunday)
    or six with a leading seconds field. :class:`ConfigError` if the expression cannot be read.
    """
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ConfigError(f"cron expression {expr!r} needs 5 fields (or 6 with seconds)")
    second, minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekday_field(weekday),
            timezone=timezone,
        )
    except ValueError as exc:
        raise ConfigError(f"cannot read cron expression {expr!r}: {exc}") from exc


def _next_after(trigger: Any, previous: datetime | None, now: datetime) -> datetime | None:
    fire = trigger.get_next_fire_time(previous, now)
    return None if fire is None else as_utc(fire)


def previous_fire_time(trigger: Any, now: datetime) -> datetime | None:
    """The last instant at or before ``now`` at which ``trigger`` fired (UTC), or None.

    Looks back in doubling windows, so a trigger that fires every few seconds and one that fires
    once a month both cost a handful of steps.
    """
    now = as_utc(now, field="now")
    lookback = timedelta(seconds=1)
    while lookback <= _LOOKBACK_LIMIT:
        fire = _next_after(trigger, None, now - lookback)
        if fire is not None and fire <= now:
            # The window holds at least one fire: walk forward to the last one before ``now``.
            while True:
                following = _next_after(trigger, fire, fire + timedelta(microseconds=1))
                if following is None or following > now:
                    return fire
                fire = following
        lookback *= 2
    return None


def owed(last_scheduled: datetime | None, last_run: datetime | None) -> bool:
    """A run is owed when the trigger fired and no run has covered that instant since.

    ``last_run`` is the latest instant a completed run covered (for the purge: its ``as_of``).
    Runs are idempotent ("everything due as of now"), so one run settles any number of missed
    instants.
    """
    if last_scheduled is None:
        return False
    return last_run is None or as_utc(last_run) < as_utc(last_scheduled)
