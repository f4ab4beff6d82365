"""The runner inside one process (as ``cctv-vault up`` runs it): start, lose the lease, stop.

Waits on ledger events and the service's own ``holding`` flag, never on the passage of time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from scheduler.jobs import CHECKPOINT_ACTION
from scheduler.lease import FileLease, PostgresLease, lease_for, lease_key
from scheduler.runner import (
    JOB_FAILED_ACTION,
    LEASE_ACQUIRED_ACTION,
    LEASE_LOST_ACTION,
    LEASE_RELEASED_ACTION,
    PURGE_RETRY,
    SchedulePlan,
    SchedulerService,
)
from scheduler.triggers import resolve_timezone
from vault import ledger
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.errors import Unavailable
from vault.lifecycle import VaultContext
from vault.models import AuditEvent
from vault.signing import SigningKey
from vault.store.fs import FilesystemStore
from vault.timerange import utcnow

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def events(engine: Engine, action: str) -> list[AuditEvent]:
    with unit_of_work(engine) as session:
        return list(
            session.exec(
                select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.seq))
            )
        )


def make_service(engine: Engine, tmp_path: Path) -> SchedulerService:
    ctx = VaultContext(
        engine=engine,
        store=FilesystemStore(tmp_path / "store"),
        keys=LocalKeyProvider(tmp_path / "kek.bin"),
    )
    plan = SchedulePlan(
        timezone=resolve_timezone("Asia/Tokyo"),
        purge_cron="30 2 * * *",
        sweep_cron="0 4 * * *",
        checkpoint_every=timedelta(minutes=5),
        expiry_every=timedelta(minutes=1),
        sweep_sample=10,
        misfire_grace=timedelta(hours=6),
        lease_poll_s=0.1,
    )
    return SchedulerService(
        ctx,
        plan,
        lease_for(engine, tmp_path / "var"),
        SigningKey.load_or_create(tmp_path / "ledger.pem"),
        instance="test:1",
    )


def break_lease(service: SchedulerService, engine: Engine) -> None:
    """Take the lease from under the service: what a failover or a careless admin would do."""
    lease = service.lease
    if isinstance(lease, PostgresLease):
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND objid = (CAST(:k AS bigint) & 4294967295)::oid"
                ),
                {"k": lease_key(schema)},
            )
            conn.commit()
    else:
        assert isinstance(lease, FileLease)
        lease.path.unlink()


def test_runner_holds_loses_and_retakes_the_lease_then_stops(
    engine: Engine, tmp_path: Path
) -> None:
    with unit_of_work(engine) as session:
        ledger.append(session, at=make_service(engine, tmp_path).ctx.clock.now(), actor="x",
                      role="operator", action="test.event", target="x", decision="allowed")
    service = make_service(engine, tmp_path)
    with service:
        (first,) = wait_for(lambda: events(engine, LEASE_ACQUIRED_ACTION), 60, "the lease")
        assert json.loads(first.details)["instance"] == "test:1"
        wait_for(service.holding.is_set, 60, "the jobs to be scheduled")
        # The checkpoint runs at start: something to anchor was there.
        wait_for(lambda: events(engine, CHECKPOINT_ACTION), 60, "the first checkpoint")

        break_lease(service, engine)
        wait_for(lambda: events(engine, LEASE_LOST_ACTION), 60, "the loss to be noticed")
        # Nobody else wants it: the same service takes it again and reschedules.
        wait_for(lambda: events(engine, LEASE_ACQUIRED_ACTION)[1:], 60, "the lease again")
        wait_for(service.holding.is_set, 60, "the jobs to be scheduled again")
    assert not service.holding.is_set()
    assert events(engine, LEASE_RELEASED_ACTION)
    # Released for real: another scheduler gets it at once.
    other = lease_for(engine, tmp_path / "var")
    try:
        assert other.try_acquire()
    finally:
        other.release()


def test_a_failed_purge_is_audited_and_tried_again_soon(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler import jobs

    def catalog_down(*_args: object, **_kwargs: object) -> NoReturn:
        raise Unavailable("catalog unavailable: OperationalError")

    monkeypatch.setattr(jobs, "run_purge", catalog_down)
    service = make_service(engine, tmp_path)
    with service:
        # A fresh vault owes its first purge: it runs at once, and fails.
        (failed,) = wait_for(lambda: events(engine, JOB_FAILED_ACTION), 60, "the failure")
        assert failed.target == "job:purge" and failed.decision == "failed"
        assert failed.reason == "catalog unavailable: OperationalError"
        retry = wait_for(
            lambda: service._scheduler and service._scheduler.get_job("purge-retry"),
            60,
            "the retry to be scheduled",
        )
        delay = retry.next_run_time - utcnow()
        assert PURGE_RETRY - timedelta(minutes=1) < delay <= PURGE_RETRY
