"""Several OS processes appending at once still form one chain, with nothing lost (L1, L3).

Kept apart from the other ledger tests so the spawned children import little.
"""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from vault.db import make_engine
from vault.ledger import EventDraft, LedgerWriter, verify_chain
from vault.models import AuditEvent

PROCESSES, THREADS, PER_THREAD = 4, 3, 40
T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def _append_in_child(url: str, schema: str | None, name: str, start: Any, out: Any) -> None:
    """Child process: a writer of its own, several threads, all released by one barrier."""
    if schema is None:
        engine = make_engine(url)
    else:
        engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    written: list[tuple[int, str]] = []
    lock = threading.Lock()
    with LedgerWriter(engine, batch_max=8, batch_wait_s=0.002, write_timeout_s=60) as writer:

        def worker(t: int) -> None:
            for i in range(PER_THREAD):
                target = f"{name}/{t}/{i}"
                seq = writer.write(
                    EventDraft(at=T0 + timedelta(milliseconds=i), actor=name, role="system",
                               action="test.append", target=target, decision="done")
                )
                with lock:
                    written.append((seq, target))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        start.wait(timeout=120)
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    engine.dispose()
    out.put((name, written))


def test_processes_appending_at_once_form_one_chain(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    schema: str | None = None
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(PROCESSES + 1)
    out = spawn.Queue()
    children = [
        spawn.Process(target=_append_in_child, args=(url, schema, f"p{n}", start, out))
        for n in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        start.wait(timeout=120)  # every child has its writer up: go
        results = dict(out.get(timeout=180) for _ in children)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    assert all(child.exitcode == 0 for child in children)
    total = PROCESSES * THREADS * PER_THREAD
    returned = {seq: target for written in results.values() for seq, target in written}
    assert sorted(returned) == list(range(1, total + 1))  # no seq handed out twice
    with Session(engine) as session:
        stored = dict(session.exec(select(AuditEvent.seq, AuditEvent.target)).all())
        assert verify_chain(session) is None
        last = session.exec(select(AuditEvent.seq).order_by(col(AuditEvent.seq).desc())).first()
    assert last == total
    assert stored == returned  # every caller's seq holds the caller's own event
