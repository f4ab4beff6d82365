"""Engine, migrations and the unit of work (the transaction is the request or the job)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from vault.errors import Unavailable

__all__ = ["make_engine", "migrate", "reading", "unit_of_work"]

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
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


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
    """A pooled connection for reads on a hot path (no ORM session, nothing to commit).

    Rolled back when done; an unreachable database surfaces as :class:`Unavailable`, like in
    :func:`unit_of_work`.
    """
    try:
        with engine.connect() as conn:
            yield conn
    except OperationalError as exc:
        raise Unavailable(f"catalog unavailable: {type(exc.orig).__name__}") from exc
