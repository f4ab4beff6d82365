"""The group-commit writer on real SQLite and PostgreSQL: one chain, nothing lost, fail closed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.unit.test_ledger import draft
from vault import ledger
from vault.db import unit_of_work
from vault.errors import InvalidInput, Unavailable
from vault.ledger import EventDraft, LedgerWriter, verify_chain
from vault.models import AuditEvent

# A short write timeout, so "does not hang" is cheap to prove, yet long enough that the
# unlocked writes around the lock (first connection, fsync) fit on a loaded CI machine; the
# bound it proves is still far below the 30 s busy timeout it replaces.
TIMEOUT = 2.0


def stored_seqs(engine: Engine) -> list[int]:
    with unit_of_work(engine) as session:
        return [int(s) for s in session.exec(select(AuditEvent.seq).order_by(col(AuditEvent.seq)))]


def chain_ok(engine: Engine) -> bool:
    with unit_of_work(engine) as session:
        return verify_chain(session) is None


class CountingWriter(LedgerWriter):
    """Records the size of every batch it writes (the batching is what is under test)."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        self.batches: list[int] = []
        super().__init__(engine, **kwargs)

    def _write_with_retry(self, drafts: Sequence[EventDraft]) -> list[int]:
        self.batches.append(len(drafts))
        return super()._write_with_retry(drafts)


def test_write_returns_durable_consecutive_seqs(engine: Engine) -> None:
    with LedgerWriter(engine, batch_wait_s=0) as writer:
        assert [writer.write(draft(i)) for i in range(3)] == [1, 2, 3]
    assert stored_seqs(engine) == [1, 2, 3]
    assert chain_ok(engine)


def test_writer_and_in_transaction_append_extend_one_chain(engine: Engine) -> None:
    with LedgerWriter(engine, batch_wait_s=0) as writer:
        assert writer.write(draft(0)) == 1
        with unit_of_work(engine) as session:
            ev = ledger.append(session, at=draft().at, actor="system:ingest", role="system",
                               action="footage.dropped", target="camera:cam-a", decision="done")
        assert ev.seq == 2
        assert writer.write(draft(2)) == 3
    assert chain_ok(engine)


def test_write_many_is_split_into_batches_of_batch_max(engine: Engine) -> None:
    with CountingWriter(engine, batch_max=100, batch_wait_s=0) as writer:
        seqs = writer.write_many([draft(i) for i in range(250)])
    # Queued at once, so the writer finds them all waiting: full batches, then the rest.
    assert writer.batches == [100, 100, 50]
    assert seqs == list(range(1, 251))
    assert stored_seqs(engine) == seqs
    assert chain_ok(engine)


def test_concurrent_threads_form_one_chain_and_lose_nothing(engine: Engine) -> None:
    threads, per_thread = 8, 40
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    with CountingWriter(engine, batch_max=16, batch_wait_s=0.005, write_timeout_s=30) as writer:

        def worker(t: int) -> None:
            start.wait()
            try:
                results[t] = [writer.write(draft(t * 1000 + i)) for i in range(per_thread)]
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    assert errors == []
    returned = sorted(s for seqs in results.values() for s in seqs)
    assert returned == list(range(1, threads * per_thread + 1))
    assert stored_seqs(engine) == returned
    for seqs in results.values():
        assert seqs == sorted(seqs)  # one thread's events keep their order
    assert max(writer.batches) <= 16
    assert sum(writer.batches) == threads * per_thread
    assert chain_ok(engine)
    # Each returned seq is the caller's own event, not a neighbour's.
    with unit_of_work(engine) as session:
        targets = dict(session.exec(select(AuditEvent.seq, AuditEvent.target)).all())
    for t, seqs in results.items():
        expected = [f"camera:cam-{t * 1000 + i}" for i in range(per_thread)]
        assert [targets[s] for s in seqs] == expected


def test_event_loop_callers_share_batches_with_threads_and_lose_nothing(engine: Engine) -> None:
    """``write_async``: many coroutines on two loops and a blocking thread, one chain."""
    per_loop, loops = 60, 2
    results: dict[int, list[int]] = {}

    with CountingWriter(engine, batch_max=32, batch_wait_s=0.005, write_timeout_s=30) as writer:

        def loop_worker(n: int) -> None:
            async def run() -> list[int]:
                return list(await asyncio.gather(
                    *(writer.write_async(draft(n * 1000 + i)) for i in range(per_loop))
                ))
            results[n] = asyncio.run(run())

        pool = [threading.Thread(target=loop_worker, args=(n,)) for n in range(loops)]
        for th in pool:
            th.start()
        blocking = [writer.write(draft(9000 + i)) for i in range(10)]
        for th in pool:
            th.join()
    returned = sorted([s for seqs in results.values() for s in seqs] + blocking)
    assert returned == list(range(1, loops * per_loop + 10 + 1))
    assert stored_seqs(engine) == returned
    assert any(b > 1 for b in writer.batches)  # coroutines shared commits
    with unit_of_work(engine) as session:
        targets = dict(session.exec(select(AuditEvent.seq, AuditEvent.target)).all())
    for n, seqs in results.items():  # each coroutine got its own event's seq
        assert [targets[s] for s in seqs] == [f"camera:cam-{n * 1000 + i}" for i in range(per_loop)]
    assert chain_ok(engine)


def test_bad_draft_is_refused_to_its_caller_only(engine: Engine) -> None:
    with pytest.raises(InvalidInput):
        draft(actor="x" * 201)
    with LedgerWriter(engine, batch_wait_s=0) as writer:
        assert writer.write(draft(1)) == 1


def test_write_after_close_is_unavailable(engine: Engine) -> None:
    writer = LedgerWriter(engine)
    writer.close()
    with pytest.raises(Unavailable, match="audit ledger unavailable"):
        writer.write(draft())


# -- the database locked: fail closed within the timeout, recover after --------------------------


@contextmanager
def ledger_locked(engine: Engine) -> Iterator[None]:
    """Another connection holds the ledger table so no writer can append."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        assert database is not None
        other = sqlite3.connect(database, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()
    else:
        with engine.connect() as other:
            other.execute(text("LOCK TABLE audit_event IN ACCESS EXCLUSIVE MODE"))
            yield
            other.rollback()


def test_locked_database_fails_every_waiter_within_the_timeout_then_recovers(
    engine: Engine,
) -> None:
    with LedgerWriter(engine, batch_wait_s=0.005, write_timeout_s=TIMEOUT) as writer:
        assert writer.write(draft(0)) == 1
        with ledger_locked(engine):
            outcomes: list[BaseException | int] = []
            elapsed: list[float] = []

            def attempt(i: int) -> None:
                began = time.monotonic()
                try:
                    outcomes.append(writer.write(draft(i)))
                except Unavailable as exc:
                    outcomes.append(exc)
                elapsed.append(time.monotonic() - began)

            pool = [threading.Thread(target=attempt, args=(i,)) for i in range(1, 5)]
            for th in pool:
                th.start()
            for th in pool:
                th.join()
            assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
            assert all("audit ledger unavailable" in str(o) for o in outcomes)
            # Bounded by the write timeout (plus scheduling slack), not the 30 s busy timeout.
            assert max(elapsed) < TIMEOUT + 2.0
            # An event-loop caller fails closed within the timeout the same way.
            began = time.monotonic()
            with pytest.raises(Unavailable, match="audit ledger unavailable"):
                asyncio.run(writer.write_async(draft(5)))
            assert time.monotonic() - began < TIMEOUT + 2.0
        # Lock released: the same writer serves again without a restart, either way.
        assert asyncio.run(writer.write_async(draft(8))) > 1
        seq = writer.write(draft(9))
    seqs = stored_seqs(engine)
    assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] == seq
    assert chain_ok(engine)


def test_head_race_with_a_writer_that_bypassed_the_lock_is_retried(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row inserted under the writer's feet (no chain lock) costs a retry, never an event.

    PostgreSQL only: SQLite's write lock admits no second writer to race with."""
    engine = pg_engine
    raced: list[int] = []
    insert_rows = ledger._INSERT.run_many

    def rogue_then_insert(conn: Any, rows: Sequence[dict[str, Any]]) -> None:
        # Between the writer's head read and its insert, once: a rogue appends seq 1.
        if not raced:
            raced.append(0)
            with engine.connect() as rogue:
                (row,) = ledger._chain_rows(ledger._read_head(rogue), [draft(77)])
                rogue.execute(ledger._TABLE.insert(), [row])
                rogue.commit()
            raced[0] = row["seq"]
        insert_rows(conn, rows)

    monkeypatch.setattr(ledger._INSERT, "run_many", rogue_then_insert)
    with LedgerWriter(engine, batch_wait_s=0) as writer:
        seq = writer.write(draft(1))
    assert raced == [1]
    assert seq == 2
    with unit_of_work(engine) as session:
        assert session.exec(select(func.count()).select_from(AuditEvent)).one() == 2
    assert chain_ok(engine)


def test_writer_gives_its_connection_back_as_it_was_lent(engine: Engine) -> None:
    """The writer's short timeouts must not leak into connections other code gets later."""
    with LedgerWriter(engine, batch_wait_s=0, write_timeout_s=TIMEOUT) as writer:
        writer.write(draft(0))
    query = (
        "PRAGMA busy_timeout" if engine.dialect.name == "sqlite" else "SHOW statement_timeout"
    )
    with engine.connect() as a, engine.connect() as b:
        settings = {str(conn.exec_driver_sql(query).scalar()) for conn in (a, b)}
    assert settings == ({"30000"} if engine.dialect.name == "sqlite" else {"0"})


def test_submitted_events_are_durable_when_their_futures_settle_and_given_up_ones_are_not(
    engine: Engine,
) -> None:
    """``submit``: the future settles with the seq once the batch has committed; a future
    cancelled before a batch took its event gives that event up (it is never written)."""

    async def run(writer: LedgerWriter) -> tuple[list[int], bool]:
        kept = [writer.submit(draft(i)) for i in range(5)]
        given_up = writer.submit(draft(99))
        given_up.cancel()  # no batch has taken it: the writer lingers a full second first
        seqs = list(await asyncio.gather(*kept))
        return seqs, given_up.cancelled()

    with LedgerWriter(engine, batch_max=100, batch_wait_s=2.0, batch_quiet_s=1.0) as writer:
        seqs, cancelled = asyncio.run(run(writer))
    assert cancelled
    assert seqs == [1, 2, 3, 4, 5]
    assert stored_seqs(engine) == seqs  # durable, and the given-up event is not among them
    with unit_of_work(engine) as session:
        targets = set(session.exec(select(AuditEvent.target)).all())
    assert "camera:cam-99" not in targets
    assert chain_ok(engine)
