"""The catalog schema: what the migrations build is what the models declare, on both backends;
the newest migration goes down and up again; the purge plan reads only due rows; gap lookups
are bounded by their indexes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import column, insert, table
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from vault.catalog import _TIMELINE_GAPS, _range_params
from vault.db import alembic_config, make_engine, migrate
from vault.models import (
    SHORT_GAP,
    Camera,
    RetentionPolicy,
    Segment,
    SegmentState,
    Site,
    UTCDateTime,
)
from vault.purge import _PLAN_CHUNK, due_chunk
from vault.timerange import TimeRange

NOW = datetime(2026, 11, 29, 2, 30, tzinfo=UTC)


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_the_migrated_schema_is_what_the_models_declare(engine: Engine) -> None:
    assert _revision(engine) is not None
    assert _differences(engine) == []


def test_the_newest_migration_goes_down_and_up_again(engine: Engine) -> None:
    head = _revision(engine)
    config = alembic_config(engine)
    command.downgrade(config, "-1")
    assert _revision(engine) != head
    assert _differences(engine) != []  # the older schema differs from the models
    command.upgrade(config, "head")
    assert _revision(engine) == head
    assert _differences(engine) == []


def _camera(conn: Connection) -> None:
    """Camera ``cam`` of site ``dc``, for rows that need one."""
    conn.execute(insert(Site.__table__), [{"id": "dc", "name": "DC", "timezone": "UTC"}])  # type: ignore[attr-defined]
    conn.execute(insert(RetentionPolicy.__table__), [  # type: ignore[attr-defined]
        {"id": "p", "days": 30, "min_days": 1, "max_days": 365, "basis": "test"}
    ])
    conn.execute(insert(Camera.__table__), [  # type: ignore[attr-defined]
        {"id": "cam", "site_id": "dc", "name": "cam", "location": "", "source_ref": "t",
         "purpose": "security", "retention_policy_id": "p", "enabled": True}
    ])


def _catalog(engine: Engine, rows: list[tuple[str, datetime]]) -> dict[str, datetime]:
    """Segments of one camera with (state, retention_until); returns id -> deadline."""
    deadlines: dict[str, datetime] = {}
    with engine.begin() as conn:
        _camera(conn)
        values = []
        for n, (state, until) in enumerate(rows):
            segment_id = str(uuid.UUID(int=n + 1))
            start = until - timedelta(days=30, minutes=1)
            values.append({
                "id": segment_id, "camera_id": "cam", "run_id": "r", "start": start,
                "end": start + timedelta(minutes=1), "media_duration": 60.0, "frames": 1,
                "codec": "h264", "width": 1, "height": 1, "bytes": 1, "sha256": "0" * 64,
                "object_key": f"segments/{segment_id}", "key_id": "k", "purpose": "security",
                "retention_until": until, "state": state, "created_at": start,
            })
            deadlines[segment_id] = until
        conn.execute(insert(Segment.__table__), values)  # type: ignore[attr-defined]
    return deadlines


def test_the_plan_pages_through_due_stored_segments_oldest_deadline_first(
    engine: Engine,
) -> None:
    # Many rows share a deadline (a camera's minute boundaries do): the keyset must not skip
    # or repeat any of them across chunk boundaries.
    shared = NOW - timedelta(days=3)
    rows = (
        [(SegmentState.STORED.value, shared)] * (_PLAN_CHUNK + 7)
        + [(SegmentState.STORED.value, NOW - timedelta(days=d)) for d in range(1, 6)]
        + [(SegmentState.STORED.value, NOW)]  # due exactly now
        + [(SegmentState.PURGED.value, NOW - timedelta(days=d)) for d in range(1, 40)]
        + [(SegmentState.PURGING.value, NOW - timedelta(days=9))]
        + [(SegmentState.STORED.value, NOW + timedelta(seconds=1))]  # not yet due
    )
    deadlines = _catalog(engine, rows)
    got: list[str] = []
    after: tuple[datetime, str] | None = None
    with engine.connect() as conn:
        while True:
            chunk = list(conn.execute(due_chunk(NOW, after)))
            if not chunk:
                break
            assert len(chunk) <= _PLAN_CHUNK
            got.extend(row.id for row in chunk)
            after = (chunk[-1].retention_until, chunk[-1].id)
    want = sorted(
        (sid for sid, (state, until) in zip(deadlines, rows, strict=True)
         if state == SegmentState.STORED.value and until <= NOW),
        key=lambda sid: (deadlines[sid], sid),
    )
    assert got == want
    assert len(got) == _PLAN_CHUNK + 7 + 5 + 1


def test_sqlite_plans_the_due_query_as_a_range_of_the_state_deadline_index(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    with engine.connect() as conn:
        for after in (None, (NOW - timedelta(days=2), str(uuid.UUID(int=5)))):
            compiled = due_chunk(NOW, after).compile(dialect=engine.dialect)
            params = [str(compiled.params[name]) for name in compiled.positiontup or ()]
            explained = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.string}", tuple(params))
            plan = " | ".join(str(row[-1]) for row in explained)
            # A search of the index range, never a scan of the table or of another index.
            want = "SEARCH segment USING INDEX ix_segment_state_retention (state=? AND"
            assert want in plan, plan
            assert "SCAN" not in plan, plan
    engine.dispose()


def test_migration_0005_flags_the_gaps_longer_than_a_day_already_recorded(
    engine: Engine,
) -> None:
    config = alembic_config(engine)
    command.downgrade(config, "0004")
    # The gap table as 0004 left it: no is_long column.
    gap_0004 = table(
        "gap", column("id"), column("camera_id"), column("start", UTCDateTime()),
        column("end", UTCDateTime()), column("reason"), column("created_at", UTCDateTime()),
    )
    start = NOW - timedelta(days=10)
    lasting = {"hour": timedelta(hours=1), "day": SHORT_GAP,
               "day+1s": SHORT_GAP + timedelta(seconds=1), "week": timedelta(days=7)}
    with engine.begin() as conn:
        _camera(conn)
        conn.execute(insert(gap_0004), [
            {"id": name, "camera_id": "cam", "start": start, "end": start + span,
             "reason": "source offline", "created_at": NOW}
            for name, span in lasting.items()
        ])
    command.upgrade(config, "head")
    with engine.connect() as conn:
        flags = {name: bool(flag) for name, flag in
                 conn.exec_driver_sql("SELECT id, is_long FROM gap").all()}
    assert flags == {"hour": False, "day": False, "day+1s": True, "week": True}
    assert _differences(engine) == []


def test_sqlite_finds_gaps_through_two_bounded_index_ranges(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    window = TimeRange(NOW - timedelta(hours=1), NOW)
    with engine.connect() as conn:
        sql, args = _TIMELINE_GAPS.bound(engine.dialect, _range_params("cam", window))
        explained = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", tuple(args))
        plan = " | ".join(str(row[-1]) for row in explained)
    # Short gaps: the start index, bounded below and above; long ones: their own index.
    assert "USING INDEX ix_gap_camera_start (camera_id=? AND start>? AND start<?)" in plan, plan
    assert "USING INDEX ix_gap_camera_long_end (camera_id=? AND is_long=? AND end>?)" in plan, plan
    assert "SCAN gap" not in plan, plan
    engine.dispose()
