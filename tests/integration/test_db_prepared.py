"""``Prepared``: the hot-path reads give what ``Connection.execute`` gives, errors included; the
SQLite instant processors store and read what SQLAlchemy's generic ones do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy import Integer, bindparam, func, literal, text
from sqlalchemy import select as core_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeDecorator

from tests.integration.test_catalog_timeline import _segment
from tests.integration.test_db_ping import _terminate
from tests.integration.test_purge import CONFIG, T0
from vault.catalog import sync_config
from vault.config import parse_config
from vault.db import Prepared, make_engine, reading, unit_of_work
from vault.errors import Unavailable
from vault.models import Gap, Segment, UTCDateTime, _sqlite_instant, _sqlite_text

_SEG = Segment.__table__.c  # type: ignore[attr-defined]
_GAP = Gap.__table__.c  # type: ignore[attr-defined]
_BY_CAMERA = core_select(
    _SEG.id, _SEG.start, _SEG.end, _SEG.bytes, _SEG.thumb_key, _SEG.wrapped_dek
).where(
    _SEG.camera_id == bindparam("camera"), _SEG.start >= bindparam("lower"),
    _SEG.state == "stored",  # a literal the statement binds itself
).order_by(_SEG.start)


def _fill(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
        session.add_all([
            _segment("cam-a", 0, 1), _segment("cam-a", 1, 1, thumb=False),
            _segment("cam-a", 2, 1, state="purged"), _segment("cam-b", 0, 1),
        ])
        session.add(Gap(id=str(uuid.uuid4()), camera_id="cam-a", start=T0, end=T0,
                        reason="source offline", created_at=T0))


@pytest.mark.parametrize("lower_offset", [timedelta(0), timedelta(seconds=30)])
def test_prepared_rows_equal_connection_execute(engine: Engine, lower_offset: timedelta) -> None:
    _fill(engine)
    prepared = Prepared(_BY_CAMERA)
    # Another zone than UTC on the way in: bound through the column type, like Core does.
    lower = (T0 + lower_offset).astimezone(timezone(timedelta(hours=9)))
    for _ in range(2):  # the first run compiles, the second reuses the form
        with reading(engine) as conn:
            expected = conn.execute(_BY_CAMERA, {"camera": "cam-a", "lower": lower}).all()
            got = prepared.rows(conn, {"camera": "cam-a", "lower": lower})
        assert [tuple(r) for r in got] == [tuple(r) for r in expected]
        assert len(got) == (2 if lower_offset == timedelta(0) else 1)
        first = got[0]
        assert first.start.tzinfo is not None and first.start.utcoffset() == timedelta(0)
        assert first.wrapped_dek == b"w" and isinstance(first.bytes, int)
    with reading(engine) as conn:
        assert prepared.rows(conn, {"camera": "nope", "lower": lower}) == []


def test_prepared_refuses_expanding_parameters(engine: Engine) -> None:
    prepared = Prepared(core_select(_SEG.id).where(_SEG.camera_id.in_(bindparam("cameras",
                                                                               expanding=True))))
    with reading(engine) as conn, pytest.raises(TypeError, match="expanding"):
        prepared.rows(conn, {"cameras": ["cam-a"]})


def test_a_driver_error_is_wrapped_like_sqlalchemy_does(engine: Engine) -> None:
    # A statement the database refuses at run time: the error comes back as SQLAlchemy's.
    if engine.dialect.name == "sqlite":
        bad = Prepared(core_select(text("no_such_column")).select_from(Segment.__table__))
    else:
        bad = Prepared(core_select((literal(1) / bindparam("zero", type_=Integer)).label("q")))
    with reading(engine) as conn, pytest.raises(DBAPIError) as caught:
        bad.rows(conn, {"zero": 0})
    assert caught.value.orig is not None


def test_a_dead_postgresql_connection_is_invalidated_and_reported_unavailable(
    pg_engine: Engine,
) -> None:
    prepared = Prepared(core_select(func.pg_backend_pid().label("pid")))
    with reading(pg_engine) as conn:
        (pid,) = prepared.rows(conn, {})[0]
    _terminate(pg_engine, pid)  # as a database restart would
    with pytest.raises(Unavailable, match="catalog unavailable"), reading(pg_engine) as conn:
        prepared.rows(conn, {})
    with reading(pg_engine) as conn:  # the dead connection left the pool; the next one works
        assert prepared.rows(conn, {})[0][0] != pid


@pytest.mark.parametrize("value", [
    datetime(2026, 11, 29, 14, 27, tzinfo=UTC),
    datetime(2026, 11, 29, 14, 27, 0, 1, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 59, 999999, tzinfo=timezone(timedelta(hours=9))),
    datetime(1999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
])
def test_sqlite_instant_processors_match_the_generic_ones(value: datetime) -> None:
    dialect = make_engine("sqlite://").dialect
    generic = UTCDateTime().dialect_impl(dialect)
    bind = TypeDecorator.bind_processor(generic, dialect)
    read = TypeDecorator.result_processor(generic, dialect, None)
    assert bind is not None and read is not None
    stored = bind(value)
    assert _sqlite_text(value) == stored  # the same text, so range comparisons agree
    assert _sqlite_instant(stored) == read(stored) == value
    assert _sqlite_instant(stored).tzinfo is UTC  # type: ignore[union-attr]
    assert _sqlite_text(None) is None and _sqlite_instant(None) is None
    # A value written without microseconds (a server default) reads the same way.
    short = stored.split(".")[0]
    assert _sqlite_instant(short) == read(short)


_MANY = sa.Table(
    "prepared_many", sa.MetaData(),
    sa.Column("n", Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=True),
    sa.Column("flag", sa.Boolean, nullable=False),
)
_INSERT_MANY = Prepared(_MANY.insert().values({c.name: bindparam(c.name) for c in _MANY.columns}))


@pytest.mark.parametrize("rows", [1, 2, 71, 72, 250])  # 999 // 5 = 199 rows per SQLite statement
def test_prepared_run_many_stores_what_connection_execute_stores(engine: Engine, rows: int) -> None:
    _MANY.create(engine)
    at = datetime(2026, 11, 29, 1, 2, 3, 456789, tzinfo=UTC)
    params = [
        {"n": i, "name": f"row {i} '?'", "at": at + timedelta(seconds=i),
         "blob": None if i % 3 == 0 else bytes([i % 256]) * 3, "flag": i % 2 == 0}
        for i in range(rows)
    ]
    with engine.begin() as conn:  # the reference: SQLAlchemy's own executemany
        conn.execute(_MANY.insert(), params)
        expected = [tuple(r) for r in conn.execute(core_select(_MANY).order_by(_MANY.c.n))]
        conn.execute(_MANY.delete())
    with engine.begin() as conn:  # the caller's transaction, as the ledger writer's
        _INSERT_MANY.run_many(conn, params)
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(core_select(_MANY).order_by(_MANY.c.n))]
    assert got == expected
    assert len(got) == rows


def test_prepared_run_many_is_all_or_nothing_within_its_transaction(engine: Engine) -> None:
    _MANY.create(engine)
    at = datetime(2026, 11, 29, tzinfo=UTC)
    clash = [{"n": i % 300, "name": "x", "at": at, "blob": None, "flag": True} for i in range(301)]
    with pytest.raises(DBAPIError), engine.begin() as conn:
        _INSERT_MANY.run_many(conn, clash)  # n = 0 twice, in the second SQLite statement
    with engine.connect() as conn:
        assert conn.execute(core_select(func.count()).select_from(_MANY)).scalar_one() == 0
