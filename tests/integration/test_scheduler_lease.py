"""The scheduler's singleton lease: exclusive, lost with its connection, freed by kill -9.

On PostgreSQL (session advisory lock on a dedicated connection) and SQLite (flock on a file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.engine import Engine

from scheduler.lease import FileLease, Lease, PostgresLease, lease_for, lease_key
from vault.db import make_engine

HOLDER = """
import sys, time
from pathlib import Path
from vault.db import make_engine
from scheduler.lease import lease_for
lease = lease_for(make_engine(sys.argv[1]), Path(sys.argv[2]))
assert lease.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


def database_url(engine: Engine) -> str:
    """The engine's URL for another process, with the test's PostgreSQL schema in it."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name != "postgresql":
        return url
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    return f"{url}?options={quote(f'-csearch_path={schema}')}"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_only_one_holder_at_a_time(engine: Engine, tmp_path: Path) -> None:
    first, second = lease_for(engine, tmp_path), lease_for(engine, tmp_path)
    assert type(first) is (PostgresLease if engine.dialect.name == "postgresql" else FileLease)
    try:
        assert first.try_acquire()
        assert first.try_acquire()  # asking again while holding it keeps it
        assert not second.try_acquire()
        assert first.held() and not second.held()
        first.release()
        first.release()  # idempotent
        assert not first.held()
        assert second.try_acquire() and second.held()
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()


def test_kill_9_of_the_holder_frees_the_lease(engine: Engine, tmp_path: Path) -> None:
    lease: Lease = lease_for(engine, tmp_path)
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url(engine), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            assert not lease.try_acquire()
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
            wait_for(lease.try_acquire, 30, "the lease after the holder was killed")
            assert lease.held()
        finally:
            lease.release()
            if holder.poll() is None:
                holder.kill()


def test_pg_lost_connection_is_a_lost_lease(pg_engine: Engine) -> None:
    engine = pg_engine
    lease, other = PostgresLease(engine), PostgresLease(engine)
    try:
        assert lease.try_acquire()
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            key = lease_key(schema)
            (pid,) = conn.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid = ((CAST(:k AS bigint) >> 32) & 4294967295)::oid"
                    " AND objid = (CAST(:k AS bigint) & 4294967295)::oid"
                ),
                {"k": key},
            ).one()
            # An administrator (or a failover) ends the holder's session.
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.commit()
        assert not lease.held()
        assert other.try_acquire()
        assert not lease.try_acquire()  # reconnects, but the lease is the other's now
    finally:
        lease.release()
        other.release()


def test_pg_lease_is_per_schema_and_never_returns_to_the_pool(pg_engine: Engine) -> None:
    engine = pg_engine
    assert lease_key("t_a") != lease_key("t_b")
    lease = PostgresLease(engine)
    try:
        assert lease.try_acquire()
        # Every pooled connection is free of the lock: none of them could hand it on.
        url = engine.url.render_as_string(hide_password=False)
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            other_schema = make_engine(url, connect_args={"options": "-csearch_path=public"})
            other_vault = PostgresLease(other_schema)
            try:
                assert other_vault.try_acquire()  # another vault, another key
            finally:
                other_vault.release()
                other_schema.dispose()
            held_here = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"
                     " AND locktype = 'advisory'")
            ).scalar_one()
        assert held_here == 0
        assert schema.startswith("t_")
    finally:
        lease.release()


def test_file_lease_notices_its_file_replaced(tmp_path: Path) -> None:
    lease = FileLease(tmp_path / "scheduler.lock")
    assert lease.try_acquire()
    assert (tmp_path / "scheduler.lock").read_text().split()[1] == str(os.getpid())
    (tmp_path / "scheduler.lock").unlink()
    other = FileLease(tmp_path / "scheduler.lock")
    assert other.try_acquire()  # locks the new file
    assert not lease.held()  # so the first gives up rather than run beside it
    other.release()
    assert lease.try_acquire()
    lease.release()
