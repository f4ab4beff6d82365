"""The scheduler's singleton lease: at most one scheduler process runs jobs at a time.

Two scheduler processes must never purge at once (DESIGN §3, §9). APScheduler 3.x cannot share
a job store between processes, so every scheduler keeps its own memory store and only the one
holding this lease runs jobs; the others poll for it and take over when the holder dies.

Both kinds of lease are released by the operating system or the database when the holding
process dies, however it dies (``kill -9`` included): there is no expiry to tune and no stale
lease to clean up.

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held by a dedicated
  connection that never goes back to the pool. The lock lives exactly as long as that database
  session: a lost connection is a lost lease, and :meth:`Lease.held` then says so. The key is
  derived from the schema name, so two vaults in one database (the tests do this) have two
  leases.
- SQLite: ``flock`` on ``<data_dir>/scheduler.lock``. The file is never deleted; if someone
  deletes or replaces it anyway, the holder notices (its descriptor no longer names the file at
  that path) and gives the lease up rather than run beside a process that locked the new file.

A lease object is used from several threads (the runner's heartbeat and each job's guard), so
every method is serialised by a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

__all__ = ["FileLease", "Lease", "PostgresLease", "lease_for"]

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "scheduler.lock"
# Bounds on how long the database may take to notice a dead holder, and the holder a dead
# connection: the server drops an unresponsive client after ~idle + interval * count seconds,
# the client gives up on unacknowledged data after TCP_USER_TIMEOUT.
_KEEPALIVE_IDLE_S, _KEEPALIVE_INTERVAL_S, _KEEPALIVE_COUNT = 10, 5, 3
_USER_TIMEOUT_MS = 15_000
_STATEMENT_TIMEOUT_MS = 10_000


class Lease(Protocol):
    """A lock that at most one process holds; released by the OS/database when it dies."""

    @property
    def description(self) -> str: ...

    def try_acquire(self) -> bool:
        """Take the lease if it is free; True if this process holds it now. Never blocks long."""

    def held(self) -> bool:
        """True while the lease is still ours (checks the connection or the file)."""

    def release(self) -> None:
        """Give the lease up (idempotent)."""


def lease_key(schema: str) -> int:
    """The advisory lock key of the scheduler lease of the vault in ``schema`` (signed 64-bit)."""
    digest = hashlib.sha256(f"cctv-vault/scheduler-lease/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLease:
    """A session-level advisory lock on a connection of its own (never returned to the pool)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._key: int | None = None
        self._held = False
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"PostgreSQL advisory lock {self._key}" if self._key is not None else "PostgreSQL"

    def _connect(self) -> Connection:
        conn = self._engine.connect()
        # A session lock must never go back to the pool with the connection: another user of
        # the pool would inherit the lease. Detached, close() really closes it.
        conn.detach()
        try:
            _tune_socket(conn)
            conn.execute(text(f"SET statement_timeout = {_STATEMENT_TIMEOUT_MS}"))
            # Server side: notice a vanished holder within ~25 s and drop its session (and lock).
            conn.execute(text(f"SET tcp_keepalives_idle = {_KEEPALIVE_IDLE_S}"))
            conn.execute(text(f"SET tcp_keepalives_interval = {_KEEPALIVE_INTERVAL_S}"))
            conn.execute(text(f"SET tcp_keepalives_count = {_KEEPALIVE_COUNT}"))
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._key = lease_key(str(schema))
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa_exc.DBAPIError, sa_exc.InvalidRequestError):
                self._conn.close()
        self._conn = None
        self._held = False

    def try_acquire(self) -> bool:
        with self._lock:
            if self._held:
                return self._check()
            try:
                if self._conn is None:
                    self._conn = self._connect()
                got = bool(
                    self._conn.execute(
                        text("SELECT pg_try_advisory_lock(CAST(:k AS bigint))"), {"k": self._key}
                    ).scalar_one()
                )
                # The lock is session-level: it outlives this (read-only) transaction.
                self._conn.commit()
            except sa_exc.DBAPIError as exc:
                log.warning("scheduler lease: database unreachable (%s)", type(exc.orig).__name__)
                self._drop()
                return False
            self._held = got
            return got

    def _check(self) -> bool:
        assert self._conn is not None
        try:
            mine = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid() AND granted"
                    " AND classid = ((CAST(:k AS bigint) >> 32) & 4294967295)::oid"
                    " AND objid = (CAST(:k AS bigint) & 4294967295)::oid AND objsubid = 1"
                ),
                {"k": self._key},
            ).scalar_one()
            self._conn.commit()
        except sa_exc.DBAPIError as exc:
            log.error(
                "scheduler lease lost: its database connection failed (%s)",
                type(exc.orig).__name__,
            )
            self._drop()
            return False
        if not mine:
            log.error("scheduler lease lost: the advisory lock is no longer held")
            self._drop()
            return False
        return True

    def held(self) -> bool:
        with self._lock:
            return self._held and self._check()

    def release(self) -> None:
        with self._lock:
            if self._conn is not None and self._held:
                with contextlib.suppress(sa_exc.DBAPIError):
                    self._conn.execute(
                        text("SELECT pg_advisory_unlock(CAST(:k AS bigint))"), {"k": self._key}
                    )
                    self._conn.commit()
            self._drop()


def _tune_socket(conn: Connection) -> None:
    """Client side: fail a query on a dead connection within seconds, not the kernel's ~15 min.

    Best effort (Linux, psycopg 3): without it the lease is still correct, only slower to
    notice a network partition.
    """
    driver = conn.connection.dbapi_connection
    pgconn = getattr(driver, "pgconn", None)
    fileno = getattr(pgconn, "socket", None)
    if not isinstance(fileno, int):
        return
    sock = socket.socket(fileno=os.dup(fileno))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", _KEEPALIVE_IDLE_S),
            ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL_S),
            ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
            ("TCP_USER_TIMEOUT", _USER_TIMEOUT_MS),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:  # a Unix-domain socket has no TCP options
        log.debug("scheduler lease: socket options not set (%s)", exc)
    finally:
        sock.close()  # closes the duplicate only


class FileLease:
    """``flock`` on a lock file: exclusive between processes (and between open descriptions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"lock file {self.path}"

    def try_acquire(self) -> bool:
        with self._lock:
            if self._fd is not None:
                return self._check()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            # Who holds it, for a person looking at the file; the lock itself is the flock.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
            self._fd = fd
            return True

    def _check(self) -> bool:
        assert self._fd is not None
        try:
            same = os.path.samestat(os.fstat(self._fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            log.error("scheduler lease lost: %s was deleted or replaced", self.path)
            os.close(self._fd)
            self._fd = None
        return same

    def held(self) -> bool:
        with self._lock:
            return self._fd is not None and self._check()

    def release(self) -> None:
        with self._lock:
            if self._fd is not None:
                # Closing the descriptor releases the flock; the file stays (see module doc).
                os.close(self._fd)
                self._fd = None


def lease_for(engine: Engine, data_dir: Path) -> Lease:
    """The lease that fits the catalog: an advisory lock on PostgreSQL, a lock file otherwise."""
    if engine.dialect.name == "postgresql":
        return PostgresLease(engine)
    return FileLease(data_dir / LOCK_FILE_NAME)
