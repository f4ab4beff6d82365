"""Cron expressions, the last scheduled instant and the catch-up rule (pure, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from scheduler.runner import SchedulePlan
from scheduler.triggers import cron_trigger, owed, previous_fire_time, resolve_timezone
from vault.errors import ConfigError
from vault.settings import Settings

TOKYO = resolve_timezone("Asia/Tokyo")
NEW_YORK = resolve_timezone("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def fires(expr: str, start: datetime, count: int, tz: ZoneInfo = TOKYO) -> list[datetime]:
    trigger = cron_trigger(expr, tz)
    out: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        out.append(fire)
        previous, now = fire, fire
    return out


def test_default_purge_cron_is_0230_in_tokyo() -> None:
    assert Settings().scheduler_purge_cron == "30 2 * * *"
    assert Settings().scheduler_timezone == "Asia/Tokyo"
    (fire,) = fires("30 2 * * *", utc(2026, 11, 29, 0, 0), 1)
    assert fire.astimezone(UTC) == utc(2026, 11, 29, 17, 30)  # 02:30 JST on the 30th
    assert fire.astimezone(TOKYO).strftime("%H:%M") == "02:30"


@pytest.mark.parametrize(
    ("weekday", "days"),
    [
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("1", {"Mon"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0-2", {"Sun", "Mon", "Tue"}),
        ("5-7", {"Fri", "Sat", "Sun"}),
        ("sat,0", {"Sat", "Sun"}),
        ("*", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
        ("*/1", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
    ],
)
def test_weekday_numbers_mean_what_crontab_means(weekday: str, days: set[str]) -> None:
    # APScheduler 3.x alone would read 0 as Monday.
    week = fires(f"0 3 * * {weekday}", utc(2026, 11, 1), 14)
    got = {f.astimezone(TOKYO).strftime("%a") for f in week}
    assert got == days


@pytest.mark.parametrize(
    "expr",
    ["30 2 * *", "1 2 3 4 5 6 7", "61 2 * * *", "30 25 * * *", "0 3 * * 8", "0 3 * * */2",
     "0 3 * * 1-5/2", "0 3 * * funday"],
)
def test_unreadable_cron_is_a_config_error(expr: str) -> None:
    with pytest.raises(ConfigError):
        cron_trigger(expr, TOKYO)


def test_six_fields_start_with_seconds() -> None:
    got = fires("*/5 * * * * *", utc(2026, 11, 29, 1, 0, 1), 3)
    assert [f.astimezone(UTC) for f in got] == [
        utc(2026, 11, 29, 1, 0, 5), utc(2026, 11, 29, 1, 0, 10), utc(2026, 11, 29, 1, 0, 15)
    ]


def test_unknown_timezone_is_a_config_error() -> None:
    for name in ("Mars/Olympus", "local", "../etc/passwd", ""):
        with pytest.raises(ConfigError):
            resolve_timezone(name)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # 02:30 JST = 17:30 UTC the day before.
        (utc(2026, 11, 29, 17, 29, 59), utc(2026, 11, 28, 17, 30)),
        (utc(2026, 11, 29, 17, 30), utc(2026, 11, 29, 17, 30)),  # at the instant: it fired
        (utc(2026, 11, 29, 17, 30, 1), utc(2026, 11, 29, 17, 30)),
        (utc(2026, 12, 2, 9, 0), utc(2026, 12, 1, 17, 30)),
    ],
)
def test_previous_fire_time_of_the_nightly_purge(now: datetime, expected: datetime) -> None:
    assert previous_fire_time(cron_trigger("30 2 * * *", TOKYO), now) == expected


def test_previous_fire_time_is_cheap_for_frequent_and_rare_triggers() -> None:
    now = utc(2026, 11, 29, 10, 0, 7)
    every_3s = cron_trigger("*/3 * * * * *", TOKYO)
    assert previous_fire_time(every_3s, now) == utc(2026, 11, 29, 10, 0, 6)
    # 1 January 00:00 JST, once a year.
    assert previous_fire_time(cron_trigger("0 0 1 1 *", TOKYO), now) == utc(2025, 12, 31, 15, 0)
    # Every minute of 02:00-02:59 JST only: the last of them, from the afternoon.
    assert previous_fire_time(cron_trigger("* 2 * * *", TOKYO), now) == utc(2026, 11, 28, 17, 59)


def test_previous_fire_time_across_a_dst_change() -> None:
    # 8 March 2026: New York skips 02:00-03:00; a 02:30 cron does not fire at a time that
    # does not exist, and the instant before is the previous day's.
    trigger = cron_trigger("30 2 * * *", NEW_YORK)
    fire = previous_fire_time(trigger, utc(2026, 3, 8, 12, 0))
    assert fire is not None
    assert fire.astimezone(NEW_YORK).strftime("%H:%M") in ("02:30", "03:30")
    assert fire <= utc(2026, 3, 8, 12, 0)


def test_previous_fire_time_refuses_naive_now() -> None:
    from vault.errors import InvalidInput

    with pytest.raises(InvalidInput):
        previous_fire_time(cron_trigger("30 2 * * *", TOKYO), datetime(2026, 11, 29, 1, 0))


NIGHT = utc(2026, 11, 28, 17, 30)


@pytest.mark.parametrize(
    ("last_scheduled", "last_run", "is_owed"),
    [
        (None, None, False),  # the trigger never fired
        (NIGHT, None, True),  # fired, never ran (a fresh vault's first start)
        (NIGHT, NIGHT - timedelta(days=2), True),  # down across two nights: one run owes both
        (NIGHT, NIGHT - timedelta(microseconds=1), True),
        (NIGHT, NIGHT, False),  # the run as of the scheduled instant covers it
        (NIGHT, NIGHT + timedelta(hours=3), False),  # e.g. a purge from the CLI after it
    ],
)
def test_owed(last_scheduled: datetime | None, last_run: datetime | None, is_owed: bool) -> None:
    assert owed(last_scheduled, last_run) is is_owed


def test_plan_from_settings_validates_at_start() -> None:
    plan = SchedulePlan.from_settings(Settings())
    assert plan.timezone.key == "Asia/Tokyo"
    assert plan.checkpoint_every == timedelta(minutes=5)
    assert plan.misfire_grace >= timedelta(hours=1)
    with pytest.raises(ConfigError):
        SchedulePlan.from_settings(Settings(scheduler_timezone="Asia/Atlantis"))
    with pytest.raises(ConfigError):
        SchedulePlan.from_settings(Settings(scheduler_sweep_cron="0 3 * * */2"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scheduler_purge_cron", "30 2 *"),
        ("scheduler_checkpoint_minutes", 0),
        ("scheduler_checkpoint_minutes", 61),
        ("scheduler_sweep_sample", 0),
        ("scheduler_misfire_grace_hours", 0),
        ("scheduler_misfire_grace_hours", 25),
        ("scheduler_lease_poll_seconds", 0),
        ("scheduler_timezone", ""),
    ],
)
def test_settings_bounds(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})  # type: ignore[arg-type]
