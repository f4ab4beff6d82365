"""The timeline's light lookup answers exactly what the ORM range lookups answer, edges included."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import select

from tests.integration.test_purge import CONFIG, T0
from vault.catalog import gaps_in_range, segments_in_range, sync_config, timeline
from vault.config import parse_config
from vault.db import reading, unit_of_work
from vault.models import MAX_SEGMENT_SECONDS, SHORT_GAP, Gap, Segment
from vault.timerange import TimeRange

MIN = timedelta(minutes=1)


def _segment(camera: str, start_min: float, minutes: float, state: str = "stored",
             thumb: bool = True) -> Segment:
    sid = str(uuid.uuid4())
    start = T0 + start_min * MIN
    return Segment(
        id=sid, camera_id=camera, run_id="run", start=start, end=start + minutes * MIN,
        media_duration=minutes * 60, frames=100, codec="h264", width=1920, height=1080,
        bytes=1000, sha256="0" * 64, object_key=f"segments/x/{sid}", key_id="k",
        wrapped_dek=b"w", thumb_key=f"thumbs/x/{sid}" if thumb else None,
        retention_until=start + timedelta(days=90), state=state, created_at=start,
    )


def test_timeline_is_the_stored_rows_of_the_range_lookups(engine: Engine) -> None:
    longest = MAX_SEGMENT_SECONDS / 60
    rows = [
        _segment("cam-a", -longest + 1, longest),  # long, starts well before, overlaps
        _segment("cam-a", -2, 2),  # ends exactly at the window's start: out
        _segment("cam-a", 0, 1, thumb=False),
        _segment("cam-a", 1, 1, state="purging"),  # not stored: never on a timeline
        _segment("cam-a", 2, 1, state="purged"),
        _segment("cam-a", 9.5, 1),  # starts inside, ends after
        _segment("cam-a", 10, 1),  # starts at the window's end: out
        _segment("cam-b", 3, 1),  # another camera
    ]
    gaps = [
        Gap(id=str(uuid.uuid4()), camera_id="cam-a", start=T0 - 30 * MIN, end=T0 + 0.5 * MIN,
            reason="source offline", created_at=T0),
        Gap(id=str(uuid.uuid4()), camera_id="cam-a", start=T0 + 10 * MIN, end=T0 + 11 * MIN,
            reason="starts at the end: out", created_at=T0),
        Gap(id=str(uuid.uuid4()), camera_id="cam-b", start=T0, end=T0 + MIN,
            reason="other camera", created_at=T0),
    ]
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
        session.add_all([*rows, *gaps])
    window = TimeRange(T0, T0 + 10 * MIN)

    with unit_of_work(engine) as session:
        orm_segments = segments_in_range(session, "cam-a", window)
        orm_gaps = gaps_in_range(session, "cam-a", window)
    with reading(engine) as conn:
        light_segments, light_gaps = timeline(conn, "cam-a", window)

    assert [s.id for s in orm_segments] == [rows[0].id, rows[2].id, rows[5].id]
    assert [(s.id, s.start, s.end, s.bytes, s.has_thumbnail) for s in light_segments] == [
        (s.id, s.start, s.end, s.bytes, s.thumb_key is not None) for s in orm_segments
    ]
    assert [g.reason for g in orm_gaps] == ["source offline"]
    assert [(g.start, g.end, g.reason) for g in light_gaps] == [
        (g.start, g.end, g.reason) for g in orm_gaps
    ]
    assert all(s.start.tzinfo is not None for s in light_segments)  # UTC-aware, as the ORM's


def _gap(camera: str, start: timedelta, end: timedelta, reason: str) -> Gap:
    return Gap(id=str(uuid.uuid4()), camera_id=camera, start=T0 + start, end=T0 + end,
               reason=reason, created_at=T0 + end)


def test_gaps_of_any_length_are_found_and_only_the_long_ones_are_flagged(engine: Engine) -> None:
    """Short gaps are read from the window's start minus SHORT_GAP, long ones through their
    flag: every overlapping gap is found, however long, at both edges of that bound."""
    day, hour = SHORT_GAP, timedelta(hours=1)
    gaps = [
        _gap("cam-a", -30 * day, -29 * day, "a month ago, long, long over: out"),
        _gap("cam-a", -9 * day, 0 * MIN, "long, ends at the window's start: out"),
        _gap("cam-a", -40 * day, 2 * MIN, "forty days, still open at the window: in"),
        _gap("cam-a", -day + MIN, MIN, "exactly a day (short), starts a day before: in"),
        _gap("cam-a", -day, -MIN, "exactly a day, over before the window: out"),
        _gap("cam-a", -day - MIN, 3 * MIN, "a day and two minutes (long): in"),
        _gap("cam-a", 5 * MIN, 5 * MIN + 3 * day, "long, starts inside: in"),
        _gap("cam-a", 10 * MIN, 10 * MIN + 3 * day, "long, starts at the window's end: out"),
        _gap("cam-a", 6 * MIN, 7 * MIN, "short, inside: in"),
        _gap("cam-b", -40 * day, hour, "another camera's long outage: out"),
    ]
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
        session.add_all(gaps)
    with unit_of_work(engine) as session:
        flagged = {g.reason for g in session.exec(select(Gap)) if g.is_long}
        # Flags follow the row when it changes: the short one made long, and back.
        (inside,) = session.exec(select(Gap).where(Gap.reason == "short, inside: in"))
        inside.end = inside.start + 2 * day
        session.add(inside)
    with unit_of_work(engine) as session:
        (inside,) = session.exec(select(Gap).where(Gap.reason == "short, inside: in"))
        assert inside.is_long
        inside.end = inside.start + MIN
        session.add(inside)
    with unit_of_work(engine) as session:
        (inside,) = session.exec(select(Gap).where(Gap.reason == "short, inside: in"))
        assert not inside.is_long
    assert flagged == {g.reason for g in gaps if g.end - g.start > day}
    assert "exactly a day (short), starts a day before: in" not in flagged

    window = TimeRange(T0, T0 + 10 * MIN)
    with unit_of_work(engine) as session:
        orm_gaps = gaps_in_range(session, "cam-a", window)
    with reading(engine) as conn:
        _, light_gaps = timeline(conn, "cam-a", window)
    expected = sorted((g for g in gaps if g.reason.endswith(": in")), key=lambda g: g.start)
    assert [g.reason for g in orm_gaps] == [g.reason for g in expected]
    assert [(g.start, g.end, g.reason) for g in light_gaps] == [
        (g.start, g.end, g.reason) for g in orm_gaps
    ]
    # The tightest edge: a window starting a microsecond before a day-long gap ends finds it
    # (it began a microsecond after the window's start minus SHORT_GAP).
    edge = TimeRange(T0 + MIN - timedelta(microseconds=1), T0 + 2 * MIN)
    with reading(engine) as conn:
        _, light_gaps = timeline(conn, "cam-a", edge)
    assert "exactly a day (short), starts a day before: in" in [g.reason for g in light_gaps]


def test_a_core_insert_that_leaves_the_flag_out_gets_it_from_start_and_end(
    engine: Engine,
) -> None:
    """Not only the ORM: a Core insert (one row or many) derives ``is_long`` the same way, so a
    long outage written that way is not lost to lookups more than a day after it began."""
    day = SHORT_GAP
    rows = [
        {"id": str(uuid.uuid4()), "camera_id": "cam-a", "start": T0 + start, "end": T0 + end,
         "reason": reason, "created_at": T0}
        for start, end, reason in (
            (-5 * day, 5 * MIN, "five days, open at the window"),
            (-MIN, MIN, "two minutes"),
        )
    ]
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
    with engine.begin() as conn:
        conn.execute(insert(Gap.__table__), rows)  # type: ignore[attr-defined]
    with unit_of_work(engine) as session:
        flags = {g.reason: g.is_long for g in session.exec(select(Gap))}
    assert flags == {"five days, open at the window": True, "two minutes": False}
    with reading(engine) as conn:
        _, gaps = timeline(conn, "cam-a", TimeRange(T0, T0 + 10 * MIN))
    assert [g.reason for g in gaps] == ["five days, open at the window", "two minutes"]
