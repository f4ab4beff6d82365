"""P3 (part) — raw audit-ledger appends/s: group commit against one commit per event.

Both contenders are :class:`vault.ledger.LedgerWriter` on a fresh, migrated catalog, fed by the
same ``--threads`` concurrent writer threads (an API worker's request threads), each call
blocking until its event is durable:

* group: ``batch_max=100``, ``batch_wait_s=0.01`` (the shipped defaults);
* single: ``batch_max=1``, ``batch_wait_s=0`` — one transaction, one commit per event.

Same chain lock, same hashing, same SQL: the ratio is what grouping commits buys. SQLite (WAL,
``synchronous=FULL``) and, when a PostgreSQL URL is given, PostgreSQL. Rounds alternate the two
modes; medians are reported. Every round is checked: every event present once, chain valid.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bench._common import OUT, machine, median, table, write_result
from vault.db import make_engine, migrate
from vault.ledger import EventDraft, LedgerWriter, verify_chain
from vault.models import AuditEvent

NAME = "p3_ledger_appends"
# mode -> (batch_max, batch_wait_s)
MODES: dict[str, tuple[int, float]] = {"group": (100, 0.01), "single": (1, 0.0)}


@contextmanager
def catalog(backend: str, pg_url: str | None) -> Iterator[Engine]:
    """A fresh catalog per backend, removed afterwards."""
    if backend == "sqlite":
        work = OUT / f"work-p3-ledger-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        engine = make_engine(f"sqlite:///{work / 'catalog.db'}")
        try:
            migrate(engine)
            yield engine
        finally:
            engine.dispose()
            for path in sorted(work.iterdir()):
                path.unlink()
            work.rmdir()
        return
    assert pg_url is not None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def one_round(engine: Engine, mode: str, threads: int, events: int) -> float:
    """Append ``events`` from ``threads`` threads; return appends per second of wall time."""
    with engine.begin() as conn:
        conn.execute(delete(AuditEvent))
    per_thread = events // threads
    at = datetime.now(UTC)
    start = threading.Barrier(threads + 1)
    failures: list[BaseException] = []
    batch_max, batch_wait_s = MODES[mode]
    with LedgerWriter(
        engine, batch_max=batch_max, batch_wait_s=batch_wait_s, write_timeout_s=60
    ) as writer:

        def worker(t: int) -> None:
            start.wait()
            try:
                for i in range(per_thread):
                    writer.write(
                        EventDraft(at=at, actor=f"bench-{t}", role="operator",
                                   action="footage.view", target=f"camera:cam-{i % 16}",
                                   decision="allowed", purpose="security_review",
                                   reason="P3 ledger bench", client="127.0.0.1",
                                   details={"thread": t, "i": i})
                    )
            except BaseException as exc:
                failures.append(exc)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        start.wait()
        began = time.perf_counter()
        for th in pool:
            th.join()
        wall = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{mode}: {len(failures)} writer thread(s) failed: {failures[0]}")
    with Session(engine) as session:
        if verify_chain(session) is not None:
            raise SystemExit(f"{mode}: the chain does not verify")
        count = session.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
    if count != per_thread * threads:
        raise SystemExit(f"{mode}: {count} events stored, {per_thread * threads} written")
    return per_thread * threads / wall


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p3_ledger_appends", description=__doc__)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--events", type=int, default=4000, help="per round, group mode")
    parser.add_argument("--single-events", type=int, default=800, help="per round, single mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("CCTV_BENCH_DATABASE_URL")
        or os.environ.get("CCTV_TEST_DATABASE_URL"),
        help="PostgreSQL URL (default: $CCTV_BENCH_DATABASE_URL or $CCTV_TEST_DATABASE_URL)",
    )
    args = parser.parse_args()
    backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    counts = {"group": args.events, "single": args.single_events}
    results: dict[str, dict[str, Any]] = {}
    for backend in backends:
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        with catalog(backend, args.pg_url) as engine:
            for n in range(args.rounds):
                for mode in MODES:
                    rate = one_round(engine, mode, args.threads, counts[mode])
                    rates[mode].append(rate)
                    print(f"  {backend:10} round {n + 1} {mode:6} {rate:9.0f} appends/s",
                          flush=True)
        group, single = median(rates["group"]), median(rates["single"])
        results[backend] = {
            "rates": rates,
            "group_median": group,
            "single_median": single,
            "ratio": group / single,
        }
    rows = [["backend", "group commit /s", "one commit per event /s", "ratio"]]
    for backend, r in results.items():
        rows.append(
            [backend, f"{r['group_median']:.0f}", f"{r['single_median']:.0f}",
             f"{r['ratio']:.1f}x"]
        )
    print(f"\nledger appends, {args.threads} writer threads, median of {args.rounds} rounds:")
    print(table(rows))
    if not args.pg_url:
        print("(PostgreSQL skipped: pass --pg-url or set CCTV_BENCH_DATABASE_URL)")
    path = write_result(
        NAME,
        {
            "threads": args.threads,
            "events": counts,
            "rounds": args.rounds,
            "modes": MODES,
            "results": results,
            "machine": machine(),
        },
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
