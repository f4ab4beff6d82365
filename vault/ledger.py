"""Hash-chained, append-only audit ledger (DESIGN §8; design note: docs/design/ledger.md).

``hash = SHA-256(prev_hash || canonical JSON of the event)``; the first event chains from 64
zeros. The chain head is serialised per transaction (an advisory lock on PostgreSQL, the write
lock taken at BEGIN IMMEDIATE on SQLite) so that every writer, in any process, extends the one
chain.

Invariants:

- L1. Sequence numbers are 1, 2, 3, ... without holes; event ``n`` links to event ``n-1`` by
  ``prev_hash`` and its ``hash`` covers its own content and ``seq``.
- L2. An event is durable before :meth:`LedgerWriter.write` returns its ``seq``; a caller that
  gets :class:`~vault.errors.Unavailable` must act as if nothing was recorded (fail closed, I3).
  The converse does not hold: an event may be durable although its writer gave up waiting, so
  the ledger can over-report an attempt, never under-report an action.
- L3. Two writers never read the same head: the head is read only after the chain lock is held,
  and a unique violation on ``seq`` (a writer that bypassed the lock) is retried, not lost.

Two ways to append:

- :func:`append` inside the caller's own transaction, when the event must commit or roll back
  together with other rows (a gap and its audit event);
- :class:`LedgerWriter`, a group-commit writer for the request path: many threads hand it events,
  one background thread writes them in batches of up to ``batch_max`` (or whatever arrived within
  ``batch_wait_s`` of the oldest waiting event), one transaction per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, text
from sqlalchemy import exc as sa_exc
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from vault.db import Prepared
from vault.errors import InvalidInput, Unavailable
from vault.models import AuditEvent
from vault.timerange import as_utc

__all__ = [
    "FIELD_LIMITS",
    "GENESIS",
    "AuditSink",
    "ChainFault",
    "ChainWalk",
    "EventDraft",
    "LedgerWriter",
    "NullLedger",
    "append",
    "canonical",
    "event_hash",
    "read_chain",
    "verify_chain",
    "walk_chain",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_LOCK_KEY = 0x6C6564676572  # "ledger"
# A head race can only follow a writer that bypassed the chain lock; a few retries are plenty.
_HEAD_RACE_ATTEMPTS = 5

# Column widths of audit_event (PostgreSQL enforces them; SQLite would silently accept more).
# Checked when a draft is made, so one oversized event fails its own caller, not a whole batch.
FIELD_LIMITS: Mapping[str, int] = {
    "actor": 200,
    "role": 64,
    "action": 100,
    "target": 500,
    "purpose": 64,
    "decision": 16,
    "reason": 1000,
    "client": 200,
}

_TABLE: Table = AuditEvent.__table__  # type: ignore[attr-defined]


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _details_json(details: Mapping[str, Any]) -> str:
    return json.dumps(dict(details), sort_keys=True, default=str)


def _body(values: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed content of an event, built from its stored column values.

    ``details`` is hashed as parsed JSON, so what is hashed is exactly what a verifier reads
    back from the column, whatever the database does to whitespace.
    """
    return {
        "seq": values["seq"],
        "at": as_utc(values["at"]).isoformat(timespec="microseconds"),
        "actor": values["actor"],
        "role": values["role"],
        "action": values["action"],
        "target": values["target"],
        "purpose": values["purpose"],
        "decision": values["decision"],
        "reason": values["reason"],
        "client": values["client"],
        "details": json.loads(values["details"]),
    }


def _hash(prev_hash: str, values: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(_body(values))).hexdigest()


def _columns(ev: AuditEvent) -> dict[str, Any]:
    return {column.name: getattr(ev, column.name) for column in _TABLE.columns}


def event_hash(prev_hash: str, ev: AuditEvent) -> str:
    return _hash(prev_hash, _columns(ev))


@dataclass(frozen=True, slots=True)
class EventDraft:
    """One event as its author states it; the ledger adds ``seq``, ``prev_hash`` and ``hash``.

    Validated on construction (aware time, column widths, no NUL, JSON-able details), so a bad
    event is refused to its own caller instead of failing the batch it would have joined.
    ``details`` is frozen into JSON here: later changes to the caller's dict cannot reach the
    ledger.
    """

    at: datetime
    actor: str
    role: str
    action: str
    target: str
    decision: str
    purpose: str = ""
    reason: str = ""
    client: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    details_json: str = field(init=False, repr=False, compare=False, default="{}")

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", as_utc(self.at, field="audit event time"))
        for name, limit in FIELD_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InvalidInput(f"audit event {name} must be a string")
            if len(value) > limit:
                raise InvalidInput(f"audit event {name} is longer than {limit} characters")
            if "\x00" in value:
                raise InvalidInput(f"audit event {name} contains a NUL character")
        try:
            encoded = _details_json(self.details)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"audit event details are not JSON: {exc}") from exc
        if "\\u0000" in encoded:
            raise InvalidInput("audit event details contain a NUL character")
        object.__setattr__(self, "details_json", encoded)

    def columns(self) -> dict[str, Any]:
        """Column values without ``seq``, ``prev_hash`` and ``hash``."""
        return {
            "at": self.at,
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "purpose": self.purpose,
            "decision": self.decision,
            "reason": self.reason,
            "client": self.client,
            "details": self.details_json,
        }


class AuditSink(Protocol):
    """Where the API layer sends its decisions: ``write`` returns once the event is durable;
    ``write_async`` is the same for a caller on an event loop, without blocking it; ``submit``
    starts the write and returns at once, with a future of the event loop that settles with
    the seq once the event is durable, or with :class:`Unavailable` (the caller applies
    ``write_timeout_s`` and cancels the future when it gives up)."""

    write_timeout_s: float

    def write(self, draft: EventDraft) -> int: ...

    async def write_async(self, draft: EventDraft) -> int: ...

    def submit(self, draft: EventDraft) -> asyncio.Future[int]: ...


def _lock_head(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})


def _chain_rows(head: tuple[int, str] | None, drafts: Sequence[EventDraft]) -> list[dict[str, Any]]:
    """Pure: the rows that extend the chain from ``head`` by ``drafts``, in order."""
    seq, prev = head if head is not None else (0, GENESIS)
    rows: list[dict[str, Any]] = []
    for draft in drafts:
        seq += 1
        row = draft.columns()
        row["seq"] = seq
        row["prev_hash"] = prev
        row["hash"] = prev = _hash(prev, row)
        rows.append(row)
    return rows


# The writer's two statements, run on the driver's cursor inside the batch's transaction (the
# per-execution SQLAlchemy work was most of a small batch's CPU on SQLite).
_HEAD = Prepared(sa_select(_TABLE.c.seq, _TABLE.c.hash).order_by(_TABLE.c.seq.desc()).limit(1))
_INSERT = Prepared(_TABLE.insert().values({c.name: bindparam(c.name) for c in _TABLE.columns}))


def _read_head(conn: Connection) -> tuple[int, str] | None:
    rows = _HEAD.rows(conn, {})
    return None if not rows else (int(rows[0].seq), str(rows[0].hash))


def _append_batch(conn: Connection, drafts: Sequence[EventDraft]) -> list[int]:
    """One transaction: take the chain lock, read the head, insert ``drafts`` after it, commit."""
    try:
        # Through SQLAlchemy, so it knows the transaction it commits or rolls back below.
        if conn.dialect.name == "sqlite":
            # The write lock from the first statement on: two processes never read one head.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        _lock_head(conn)
        rows = _chain_rows(_read_head(conn), drafts)
        _INSERT.run_many(conn, rows)
        conn.commit()
    except BaseException:
        with contextlib.suppress(sa_exc.DBAPIError):
            conn.rollback()
        raise
    return [row["seq"] for row in rows]


class _LedgerConnection:
    """The writer thread's own connection, with every wait bounded by the write timeout.

    Held for the writer's life (a pool checkout, a ping and two settings per batch cost more
    than the batch's own statements on PostgreSQL); pinged after an idle spell, so a database
    restarted while the ledger was quiet costs no batch; thrown away after any failure; given
    back to the pool with the settings it was lent with.
    """

    IDLE_PING_S = 1.0

    def __init__(self, engine: Engine, timeout_s: float) -> None:
        self._engine = engine
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._conn: Connection | None = None
        self._restore: list[str] = []
        self._last_used = 0.0

    def get(self) -> Connection:
        now = time.monotonic()
        if self._conn is not None and now - self._last_used > self.IDLE_PING_S:
            try:
                self._conn.exec_driver_sql("SELECT 1")
                self._conn.rollback()
            except sa_exc.DBAPIError:
                self.discard()
        if self._conn is None:
            self._conn = self._open()
        self._last_used = now
        return self._conn

    def _open(self) -> Connection:
        conn = self._engine.connect()
        try:
            if conn.dialect.name == "sqlite":
                previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {self._timeout_ms}")
                self._restore = [f"PRAGMA busy_timeout = {int(previous or 0)}"]
            elif conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET statement_timeout = {self._timeout_ms}")
                conn.exec_driver_sql(f"SET lock_timeout = {self._timeout_ms}")
                self._restore = ["RESET statement_timeout", "RESET lock_timeout"]
            conn.commit()
        except BaseException:
            with contextlib.suppress(sa_exc.DBAPIError):
                conn.invalidate()
                conn.close()
            raise
        return conn

    def discard(self) -> None:
        """Drop a connection whose state is unknown: never back to the pool."""
        if self._conn is not None:
            with contextlib.suppress(sa_exc.DBAPIError):
                self._conn.invalidate()
            with contextlib.suppress(sa_exc.DBAPIError):
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            for statement in self._restore:
                self._conn.exec_driver_sql(statement)
            self._conn.commit()
            self._conn.close()
            self._conn = None
        except sa_exc.DBAPIError:
            self.discard()


def append(
    session: Session,
    *,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    target: str,
    decision: str,
    purpose: str = "",
    reason: str = "",
    client: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event inside the caller's transaction; durable when that transaction commits.

    For events that must commit together with other rows. On SQLite the head is read under the
    caller's transaction, so a concurrent writer makes this transaction fail with "database is
    locked" (never a forked chain); request-path events go through :class:`LedgerWriter`.
    """
    draft = EventDraft(
        at=at,
        actor=actor,
        role=role,
        action=action,
        target=target,
        decision=decision,
        purpose=purpose,
        reason=reason,
        client=client,
        details=details or {},
    )
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    head = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    (row,) = _chain_rows(None if head is None else (head.seq, head.hash), [draft])
    ev = AuditEvent(**row)
    session.add(ev)
    session.flush()
    return ev


# -- group commit ------------------------------------------------------------------------------


class _State(enum.Enum):
    QUEUED = "queued"
    TAKEN = "taken"  # in a batch: its fate is the batch's
    ABANDONED = "abandoned"  # its caller gave up before it joined a batch: never written


class _Waiter:
    """One event handed in: a blocking caller waits on ``done``; an event-loop caller on
    ``future``, which the writer settles through its loop (one wake-up per loop and batch)."""

    __slots__ = ("draft", "enqueued", "done", "seq", "error", "state", "future")

    def __init__(
        self, draft: EventDraft, enqueued: float, future: asyncio.Future[int] | None = None
    ) -> None:
        self.draft = draft
        self.enqueued = enqueued
        self.future = future
        self.done = threading.Event() if future is None else None
        self.seq: int | None = None
        self.error: str | None = None
        self.state = _State.QUEUED


def _settle(waiters: Sequence[_Waiter]) -> None:
    """On the callers' event loop: resolve their futures with the batch's outcome."""
    for waiter in waiters:
        future = waiter.future
        if future is None or future.done():
            continue
        if waiter.error is not None:
            future.set_exception(Unavailable(f"audit ledger unavailable: {waiter.error}"))
        else:
            future.set_result(cast(int, waiter.seq))


def _settle_one(future: asyncio.Future[int], seq: int) -> None:
    if not future.done():
        future.set_result(seq)


def _describe(exc: BaseException) -> str:
    """A short reason for logs and errors: the driver's first line, never SQL parameters."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        first = (str(exc.orig).strip().splitlines() or [""])[0]
        return f"{type(exc.orig).__name__}: {first[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class LedgerWriter:
    """Group commit: callers block in :meth:`write` while one thread writes their batches.

    A batch closes at ``batch_max`` events, ``batch_wait_s`` after its oldest event was handed
    in, or after ``batch_quiet_s`` (default half of ``batch_wait_s``) without a new event,
    whichever comes first. So a burst of callers shares one commit, a lone caller waits five
    milliseconds rather than ten, and under a steady load (an event every millisecond or so)
    batches grow towards ``batch_wait_s`` worth of events: each commit costs CPU, an fsync and,
    on SQLite, every reader's page cache, so fewer and larger ones are what the load wants.
    The quiet spell is also how often a lingering writer wakes to look: each wake-up takes the
    GIL from a busy event loop, and at a fifth of the window (five per batch) the API paid for
    them (P3: ~20 thread switches per batch against ~12, and ~10% more CPU per request).
    One transaction per batch; a failed batch fails every one of its callers with
    :class:`Unavailable`, and the next batch tries the database again.

    One writer per process is enough; processes share the chain through the database lock.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        batch_max: int = 100,
        batch_wait_s: float = 0.01,
        write_timeout_s: float = 3.0,
        batch_quiet_s: float | None = None,
        name: str = "ledger-writer",
    ) -> None:
        if batch_max < 1:
            raise InvalidInput("batch_max must be at least 1")
        if batch_wait_s < 0 or write_timeout_s <= 0:
            raise InvalidInput("batch_wait_s must be >= 0 and write_timeout_s > 0")
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.batch_quiet_s = batch_wait_s / 2 if batch_quiet_s is None else batch_quiet_s
        self.write_timeout_s = write_timeout_s
        self._db = _LedgerConnection(engine, write_timeout_s)  # the writer thread's only
        self._cond = threading.Condition()
        self._queue: deque[_Waiter] = deque()
        self._last_enqueue = 0.0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- callers -------------------------------------------------------------------------------

    def write(self, draft: EventDraft) -> int:
        """Return ``draft``'s seq once it is durable; raise :class:`Unavailable` otherwise."""
        return self.write_many([draft])[0]

    def write_many(self, drafts: Sequence[EventDraft]) -> list[int]:
        """Like :meth:`write` for several events (in order); all or nothing for the caller."""
        if not drafts:
            return []
        now = time.monotonic()
        deadline = now + self.write_timeout_s
        waiters = [_Waiter(draft, now) for draft in drafts]
        self._enqueue(waiters, now)
        for waiter in waiters:
            assert waiter.done is not None
            if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
                self._abandon(waiters)
                if all(w.done is not None and w.done.is_set() and w.error is None
                       for w in waiters):
                    break  # finished while we were giving up
                raise Unavailable(
                    f"audit ledger unavailable: not durable within {self.write_timeout_s:g}s"
                )
            if waiter.error is not None:
                self._abandon(waiters)
                raise Unavailable(f"audit ledger unavailable: {waiter.error}")
        return [w.seq for w in waiters if w.seq is not None]

    async def write_async(self, draft: EventDraft) -> int:
        """Like :meth:`write`, awaited on an event loop instead of blocking a thread."""
        waiter = self._submit(draft)
        future = waiter.future
        assert future is not None
        # asyncio.wait, not wait_for: a timeout must not cancel the future, whose batch may
        # still be committing; the outcome is read below either way.
        await asyncio.wait((future,), timeout=self.write_timeout_s)
        if not future.done():
            self._abandon([waiter])
            # Nobody reads this future any more: cancelled, the writer's settling skips it
            # (and an outcome set on it later would be an exception nobody retrieves).
            future.cancel()
            if waiter.state is _State.TAKEN and waiter.seq is not None and waiter.error is None:
                return waiter.seq  # finished while we were giving up
            raise Unavailable(
                f"audit ledger unavailable: not durable within {self.write_timeout_s:g}s"
            )
        return future.result()

    def submit(self, draft: EventDraft) -> asyncio.Future[int]:
        """Hand ``draft`` in and return at once (on the event loop): the future settles with
        its seq once it is durable, or with :class:`Unavailable`. Cancelling the future gives
        the event up if no batch has taken it yet (a taken one may still be written: the ledger
        may over-report an attempt, never lose one)."""
        future = self._submit(draft).future
        assert future is not None
        return future

    def _submit(self, draft: EventDraft) -> _Waiter:
        now = time.monotonic()
        waiter = _Waiter(draft, now, asyncio.get_running_loop().create_future())
        self._enqueue([waiter], now)
        return waiter

    def _enqueue(self, waiters: list[_Waiter], now: float) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("audit ledger unavailable: the writer is closed")
            was_empty = not self._queue
            self._queue.extend(waiters)
            self._last_enqueue = now
            # Wake the writer only when it can act: a first event starts a batch, a full
            # queue ends the wait; anything in between would be a wasted wake-up.
            if was_empty or len(self._queue) >= self.batch_max:
                self._cond.notify()

    def _abandon(self, waiters: Iterable[_Waiter]) -> None:
        """Events not yet in a batch are dropped: their caller is told they were not written."""
        with self._cond:
            for waiter in waiters:
                if waiter.state is _State.QUEUED:
                    waiter.state = _State.ABANDONED

    def close(self) -> None:
        """Write what is queued, then stop the thread. Later writes raise Unavailable."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=self.write_timeout_s * 2 + self.batch_wait_s)
        if self._thread.is_alive():
            log.warning("ledger writer did not stop within %.1fs", self.write_timeout_s * 2)

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._commit(batch)
        finally:
            self._db.release()

    def _next_batch(self) -> list[_Waiter] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            fill_until = self._queue[0].enqueued + self.batch_wait_s
            while len(self._queue) < self.batch_max and not self._closing:
                # Linger while events keep arriving; a quiet spell means the burst is over
                # and waiting longer would only add latency.
                until = min(fill_until, self._last_enqueue + self.batch_quiet_s)
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Waiter] = []
            while self._queue and len(batch) < self.batch_max:
                waiter = self._queue.popleft()
                # A future its caller cancelled is an event given up (read without the loop's
                # involvement: at worst an event given up this instant is still written).
                if waiter.future is not None and waiter.future.cancelled():
                    waiter.state = _State.ABANDONED
                if waiter.state is _State.QUEUED:
                    waiter.state = _State.TAKEN
                    batch.append(waiter)
            return batch

    def _commit(self, batch: list[_Waiter]) -> None:
        drafts = [w.draft for w in batch]
        try:
            seqs = self._write_with_retry(drafts)
        except Exception as exc:  # any failure: fail this batch, keep the thread for the next
            reason = _describe(exc)
            if isinstance(exc, sa_exc.DBAPIError):
                log.warning("ledger batch failed events=%d reason=%s", len(batch), reason)
            else:
                log.exception("ledger batch failed events=%d reason=%s", len(batch), reason)
            for waiter in batch:
                waiter.error = reason
            self._wake(batch)
            return
        log.debug("ledger batch committed events=%d last_seq=%d", len(batch), seqs[-1])
        for waiter, seq in zip(batch, seqs, strict=True):
            waiter.seq = seq
        self._wake(batch)

    @staticmethod
    def _wake(batch: list[_Waiter]) -> None:
        """Tell each caller its event's fate: blocking callers one by one, event-loop callers
        with one call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
        for waiter in batch:
            if waiter.done is not None:
                waiter.done.set()
            elif waiter.future is not None:
                by_loop.setdefault(waiter.future.get_loop(), []).append(waiter)
        for loop, waiters in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, waiters)

    def _write_with_retry(self, drafts: Sequence[EventDraft]) -> list[int]:
        reconnected = False
        for attempt in range(1, _HEAD_RACE_ATTEMPTS + 1):
            try:
                return _append_batch(self._db.get(), drafts)
            except sa_exc.IntegrityError as exc:
                # Only a writer that skipped the chain lock can take our seq: read the new
                # head and chain after it.
                if attempt == _HEAD_RACE_ATTEMPTS:
                    raise
                log.warning("ledger head race attempt=%d reason=%s", attempt, _describe(exc))
            except sa_exc.DBAPIError as exc:
                self._db.discard()
                if not exc.connection_invalidated or reconnected:
                    raise
                # The held connection died (database restarted, network cut) since the last
                # batch: one fresh connection, at once, rather than failing a caller for a
                # connection nobody could have known was dead. Should the commit itself have
                # reached the database before the cut, the retry records these events twice:
                # the ledger may over-report an attempt, never lose one.
                reconnected = True
                log.warning("ledger connection lost; reconnecting reason=%s", _describe(exc))
            except BaseException:
                self._db.discard()
                raise
        raise AssertionError("unreachable")


class NullLedger:
    """Writes nothing and returns a counter. ONLY for the P3 benchmark's "ledger off" run.

    With ``delay_s``, :meth:`write_async` first waits that long on the event loop: the
    benchmark's "wait" reference, what a request pays for being suspended as long as a group
    commit takes, with no ledger work at all.

    Wiring this into a serving process would send footage with no audit record, breaking I3
    and I10: the composition root must never construct it outside ``bench/``.
    """

    write_timeout_s = 3.0

    def __init__(self, delay_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._delay_s = delay_s

    def write(self, draft: EventDraft) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    async def write_async(self, draft: EventDraft) -> int:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        return self.write(draft)

    def submit(self, draft: EventDraft) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        seq = self.write(draft)
        if self._delay_s:
            loop.call_later(self._delay_s, _settle_one, future, seq)
        else:
            future.set_result(seq)
        return future

    def write_many(self, drafts: Sequence[EventDraft]) -> list[int]:
        return [self.write(d) for d in drafts]

    def close(self) -> None:
        return None


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainFault:
    """The first event that does not verify, and why."""

    seq: int
    kind: str  # missing | unexpected | link | altered
    detail: str


@dataclass(slots=True)
class ChainWalk:
    """What one pass over the stored chain found."""

    events: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    fault: ChainFault | None = None
    # Stored hashes at the sequence numbers the caller asked about (checkpoints).
    hashes: dict[int, str] = field(default_factory=dict)


def walk_chain(rows: Iterable[Mapping[str, Any]], want: Iterable[int] = ()) -> ChainWalk:
    """Recompute the chain over ``rows`` (ordered by seq) and name its first bad event.

    Pure: rows are column mappings. After the first fault the walk goes on only to report the
    head and the stored hashes at ``want``; later faults follow from the first and are not
    reported.
    """
    wanted = set(want)
    walk = ChainWalk()
    expected = 1
    prev = GENESIS
    for row in rows:
        seq = int(row["seq"])
        stored = str(row["hash"])
        walk.events += 1
        walk.head_seq, walk.head_hash = seq, stored
        if seq in wanted:
            walk.hashes[seq] = stored
        if walk.fault is not None:
            continue
        if seq > expected:
            walk.fault = ChainFault(
                expected, "missing", f"event {expected} is missing (next stored is {seq})"
            )
        elif seq < expected:
            walk.fault = ChainFault(seq, "unexpected", f"event {seq} is out of the sequence")
        elif row["prev_hash"] != prev:
            walk.fault = ChainFault(
                seq, "link", f"event {seq} does not link to event {seq - 1}'s hash"
            )
        else:
            try:
                recomputed = _hash(prev, row)
            except (ValueError, TypeError, KeyError, InvalidInput) as exc:
                recomputed = f"unreadable ({type(exc).__name__})"
            if recomputed != stored:
                walk.fault = ChainFault(
                    seq, "altered", f"event {seq}'s content does not match its hash"
                )
        prev = stored
        expected = seq + 1
    return walk


def read_chain(conn: Connection) -> Iterable[Mapping[str, Any]]:
    """Every stored event in seq order, streamed (the ledger may be large)."""
    result = conn.execute(
        sa_select(_TABLE).order_by(_TABLE.c.seq), execution_options={"yield_per": 2000}
    )
    return (cast(Mapping[str, Any], row._mapping) for row in result)


def verify_chain(session: Session) -> int | None:
    """Return the first sequence number whose event does not verify, or None if all do.

    Only the chain: a deleted tail is invisible here; :func:`vault.checkpoints.verify` also
    compares signed checkpoints.
    """
    fault = walk_chain(read_chain(session.connection())).fault
    return None if fault is None else fault.seq
