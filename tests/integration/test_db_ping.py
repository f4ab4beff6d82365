"""PostgreSQL connections: an idle pooled connection is pinged before use, a busy one is not."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import vault.db
from vault.db import reading
from vault.errors import Unavailable


def _backend_pid(engine: Engine) -> int:
    with reading(engine) as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pid: int) -> None:
    """Kill one server backend from outside the engine's pool (as a restart would), and wait
    until it is gone (the timeout argument, PostgreSQL 14+)."""
    admin = create_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)
    try:
        with admin.connect() as other:
            assert other.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar()
    finally:
        admin.dispose()


def test_a_connection_that_died_while_idle_is_replaced_unnoticed(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vault.db, "IDLE_PING_S", -1.0)  # every checkout counts as idle
    first = _backend_pid(pg_engine)
    _terminate(pg_engine, first)
    second = _backend_pid(pg_engine)  # the ping found it dead: a fresh connection, no error
    assert second != first


def test_a_busy_connection_is_trusted_and_one_failure_renews_the_pool(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vault.db, "IDLE_PING_S", 3600.0)  # never idle: no ping
    first = _backend_pid(pg_engine)
    _terminate(pg_engine, first)
    with pytest.raises(Unavailable, match="catalog unavailable"):
        _backend_pid(pg_engine)
    assert _backend_pid(pg_engine) != first  # the next request is served again
