"""Engine, migrations and the unit of work (the transaction is the request or the job)."""

from __future__ import annotations

import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, StatementError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import CompoundSelect, Insert, Select
from sqlmodel import Session, create_engine

from vault.errors import Unavailable

__all__ = ["Prepared", "make_engine", "migrate", "reading", "unit_of_work"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, ``synchronous=FULL`` and a busy timeout."""
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": 30}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs.setdefault("poolclass", StaticPool)
        else:
            path = url.split("sqlite:///", 1)[1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine)
    return engine


# A pooled connection idle longer than this is pinged before use; a busier one is trusted.
IDLE_PING_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip per checkout.

    ``pool_pre_ping`` sends a ``SELECT 1`` before every use: on PostgreSQL that is a round trip
    per unit of work, as much as the timeline lookup's own queries. Here only a connection that
    sat idle in the pool for more than ``IDLE_PING_S`` is pinged (a database restarted while the
    API was quiet costs no request); one that dies between two busy uses fails that one request
    with :class:`Unavailable`, and SQLAlchemy then discards the pool's other connections.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since <= IDLE_PING_S:
            return
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_conn.rollback()
        except Exception as exc:  # any driver error: this connection is not usable
            # The pool drops this connection and checks out a fresh one.
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the catalog schema to the newest revision (also on SQLite)."""
    command.upgrade(alembic_config(engine), "head")


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: commits once at the end, rolls back on any error.

    A database that cannot be reached surfaces as :class:`Unavailable`, so callers can keep
    footage in the spool and retry instead of losing it.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise Unavailable(f"catalog unavailable: {type(exc.orig).__name__}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A pooled connection for reads on a hot path: no ORM session, no transaction.

    Each statement reads its own consistent snapshot, so a caller that needs several facts to
    agree reads them in one statement. On PostgreSQL the connection is in autocommit mode,
    which saves the ``BEGIN`` and ``ROLLBACK`` round trips around every use (~90 µs CPU and
    ~260 µs wall here); SQLite's driver begins no transaction for a ``SELECT`` anyway, and
    switching its mode per checkout would cost more than it saves. An unreachable database
    surfaces as :class:`Unavailable`, like in :func:`unit_of_work`.
    """
    try:
        conn = engine.connect()
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn:
            yield conn
    except OperationalError as exc:
        raise Unavailable(f"catalog unavailable: {type(exc.orig).__name__}") from exc


_Processor = Callable[[Any], Any] | None


@dataclass(slots=True)
class _Form:
    """A statement as one dialect runs it: SQL text, how to bind, how to read."""

    sql: str
    positional: tuple[str, ...] | None  # parameter order, or None for named parameters
    defaults: Mapping[str, Any]  # the statement's own literal values
    binders: Mapping[str, Callable[[Any], Any]]
    row: Callable[..., Any]
    # (column index, result processor) for the columns that have one; known after the first
    # run (its description)
    readers: list[tuple[int, Callable[[Any], Any]]] | None = None
    # An INSERT's "(?, ?, ...)" when it can take many rows in one statement (SQLite), and the
    # statements for n rows made from it so far
    row_values: str | None = None
    multi: dict[int, str] | None = None

    def multi_row_sql(self, n: int) -> str:
        assert self.row_values is not None
        if self.multi is None:
            self.multi = {}
        sql = self.multi.get(n)
        if sql is None:
            head = self.sql[: len(self.sql) - len(self.row_values)]
            sql = self.multi[n] = head + ", ".join([self.row_values] * n)
        return sql

    def args(self, params: Mapping[str, Any]) -> Any:
        values = {**self.defaults, **params}
        for key, processor in self.binders.items():
            values[key] = processor(values[key])
        return values if self.positional is None else [values[k] for k in self.positional]


class Prepared:
    """A Core statement compiled once per dialect and run straight on the DBAPI cursor.

    For the few reads on the API's hot path (a principal, a camera and grant, a timeline):
    SQLAlchemy's per-execution work (cache key, execution context, result metadata, row
    objects) costs four to five times the statement itself on SQLite (~120-170 µs against
    ~25 µs). The statement is still written once in Core and compiled by SQLAlchemy for the
    connection's dialect; values are bound and read through the column types' own processors,
    so they go in and come out as with ``Connection.execute``. Rows are named tuples. An
    ``INSERT`` (every value a bind parameter) runs through :meth:`run_many` in the caller's
    transaction, which the caller begins and commits on ``conn`` as usual.

    Errors are SQLAlchemy's: a driver error is wrapped as ``DBAPIError`` (a dead connection is
    invalidated, an unreachable database is an ``OperationalError``, which :func:`reading`
    reports as :class:`Unavailable`). Statements with expanding (``IN``) parameters are refused.
    """

    def __init__(self, statement: Select[Any] | CompoundSelect[Any] | Insert) -> None:
        self._statement = statement
        self._forms: weakref.WeakKeyDictionary[Dialect, _Form] = weakref.WeakKeyDictionary()

    def _compile(self, dialect: Dialect) -> _Form:
        compiled = self._statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string:
            raise TypeError("Prepared supports no expanding (IN) parameters")
        binders: dict[str, Callable[[Any], Any]] = {}
        for key, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                binders[key] = processor
        positional = tuple(compiled.positiontup or ()) if compiled.positional else None
        names = set(positional if positional is not None else compiled.binds)
        defaults = {
            key: bind.effective_value
            for key, bind in compiled.binds.items()
            if key in names and not bind.required
        }
        form = _Form(
            sql=compiled.string,
            positional=positional,
            defaults=defaults,
            binders={k: p for k, p in binders.items() if k in names},
            row=_row_type(self._statement),
            row_values=_row_values(compiled.string, positional, dialect),
        )
        return self._forms.setdefault(dialect, form)

    def _readers(
        self, dialect: Dialect, description: Any
    ) -> list[tuple[int, Callable[[Any], Any]]]:
        # Some drivers' result processors depend on the column's wire type, hence the first
        # run's description.
        assert isinstance(self._statement, Select | CompoundSelect)
        processors: list[_Processor] = [
            column.type.dialect_impl(dialect).result_processor(dialect, described[1])
            for column, described in zip(
                self._statement.selected_columns, description, strict=True
            )
        ]
        return [(i, read) for i, read in enumerate(processors) if read is not None]

    def _form(self, dialect: Dialect) -> _Form:
        return self._forms.get(dialect) or self._compile(dialect)

    def bound(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, Any]:
        """The SQL and driver arguments :meth:`rows` sends for ``params`` (to explain a plan)."""
        form = self._form(dialect)
        return form.sql, form.args(params)

    def _open(self, conn: Connection) -> tuple[_Form, Any, Any]:
        """The dialect's form, the driver connection and a fresh cursor on it."""
        form = self._form(conn.dialect)
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        return form, dbapi_conn, dbapi_conn.cursor()

    def run_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """Execute the statement once per parameter set: on SQLite, an INSERT as one statement
        of many rows (``VALUES (...), (...)``: one step instead of one per row, and for a
        thread sharing the GIL with an event loop, one hand-off instead of one per row);
        elsewhere ``executemany`` (psycopg pipelines it)."""
        form, dbapi_conn, cursor = self._open(conn)
        try:
            if form.row_values is not None and len(params) > 1:
                per = max(1, _SQLITE_PARAMETERS // form.row_values.count("?"))
                for i in range(0, len(params), per):
                    chunk = params[i : i + per]
                    cursor.execute(
                        form.multi_row_sql(len(chunk)),
                        [value for p in chunk for value in form.args(p)],
                    )
                return
            cursor.executemany(form.sql, [form.args(p) for p in params])
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, exc, form.sql, params, dbapi_conn, cursor) from exc
        finally:
            cursor.close()

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """All rows of the statement for ``params`` (named tuples)."""
        assert isinstance(self._statement, Select | CompoundSelect)
        form, dbapi_conn, cursor = self._open(conn)
        try:
            cursor.execute(form.sql, form.args(params))
            fetched = cursor.fetchall()
            if form.readers is None:
                form.readers = self._readers(conn.dialect, cursor.description)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, exc, form.sql, params, dbapi_conn, cursor) from exc
        finally:
            cursor.close()
        make, slots = form.row._make, form.readers  # type: ignore[attr-defined]
        if not slots:
            return [make(r) for r in fetched]
        rows = []
        for r in fetched:
            values = list(r)
            for i, read in slots:
                values[i] = read(values[i])
            rows.append(make(values))
        return rows


# Host parameters per statement: SQLite's historical limit (3.32+ allows 32,766 by default;
# the smaller one holds wherever the library was built with the old default).
_SQLITE_PARAMETERS = 999


def _row_values(sql: str, positional: tuple[str, ...] | None, dialect: Dialect) -> str | None:
    """The ``(?, ?, ...)`` of a SQLite ``INSERT ... VALUES`` of bound values only."""
    if dialect.name != "sqlite" or not positional or not sql.startswith("INSERT "):
        return None
    _, sep, values = sql.rpartition(" VALUES ")
    expected = "(" + ", ".join(["?"] * len(positional)) + ")"
    return values if sep and values == expected else None


def _row_type(statement: Select[Any] | CompoundSelect[Any] | Insert) -> Callable[..., Any]:
    if not isinstance(statement, Select | CompoundSelect):
        return tuple
    # rename: an unlabelled expression gets a positional name instead of failing
    return namedtuple("Row", statement.selected_columns.keys(), rename=True)


def _wrapped(
    conn: Connection, exc: Any, sql: str, params: Any, dbapi_conn: Any, cursor: Any
) -> StatementError:
    """A driver error as SQLAlchemy reports it; a dead connection is invalidated first."""
    dialect = conn.dialect
    invalidated = bool(dialect.is_disconnect(exc, dbapi_conn, cursor))
    if invalidated:
        conn.invalidate(exc)
    wrapped: StatementError = DBAPIError.instance(
        sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=invalidated
    )
    return wrapped
