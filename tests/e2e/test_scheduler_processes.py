"""Scheduler processes for real: the singleton lease, takeover after kill -9, catch-up at start.

Each scheduler is its own OS process running the ``cctv-vault scheduler`` command function over
one vault (SQLite + filesystem store, or PostgreSQL + filesystem store). The test process reads
the same catalog to see what they did; it waits on rows, ledger events, log lines and process
exits, never on the passage of time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from scheduler.jobs import PURGE_ACTION
from scheduler.runner import LEASE_ACQUIRED_ACTION, LEASE_RELEASED_ACTION
from scheduler.triggers import cron_trigger, previous_fire_time, resolve_timezone
from tests.support.configs import SITE_AND_POLICY
from vault.catalog import sync_config
from vault.checkpoints import verify
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.lifecycle import VaultContext, commit_segment
from vault.models import AuditEvent, PurgeRun, Segment, SegmentState
from vault.pending import PendingSegment
from vault.purge import RunState
from vault.signing import SigningKey
from vault.store.fs import FilesystemStore
from vault.timerange import utcnow

pytestmark = pytest.mark.slow

RETENTION = timedelta(days=90)  # the "pci" policy of SITE_AND_POLICY
MIN = timedelta(minutes=1)
TOKYO = resolve_timezone("Asia/Tokyo")
COMMAND = "import typer; from cctv_vault.cli_scheduler import scheduler; typer.run(scheduler)"
CONFIG = SITE_AND_POLICY + """
[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }
"""

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


def database_url(engine: Engine) -> str:
    """The engine's URL for another process, with the test's PostgreSQL schema in it."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name != "postgresql":
        return url
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    return f"{url}?options={quote(f'-csearch_path={schema}')}"


@dataclass
class Scheduler:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Deployment:
    """One vault on disk and in the catalog, and the scheduler processes started over it."""

    engine: Engine
    data_dir: Path
    ctx: VaultContext
    env: dict[str, str]
    started: list[Scheduler] = field(default_factory=list)

    def start(self, **settings: str) -> Scheduler:
        env = {**self.env, **{f"CCTV_{k.upper()}": v for k, v in settings.items()}}
        log = self.data_dir.parent / f"scheduler-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", COMMAND], env=env, stdout=subprocess.DEVNULL, stderr=out
            )
        scheduler = Scheduler(process, log)
        self.started.append(scheduler)
        return scheduler

    def stop(self, scheduler: Scheduler) -> int:
        scheduler.process.send_signal(signal.SIGTERM)
        return scheduler.process.wait(timeout=60)

    def record(self, retention_until: datetime, count: int = 1) -> list[Segment]:
        """Commit one-minute segments whose retention ends at ``retention_until``."""
        spool = self.data_dir.parent / "spool"
        spool.mkdir(exist_ok=True)
        segments = []
        for i in range(count):
            end = retention_until - RETENTION + i * MIN
            pending = PendingSegment(
                segment_id=str(uuid.uuid4()), camera_id="cam-a", run_id="run-a",
                run_started_at=end - MIN, restamped=False, start=end - MIN, state="closed",
                end=end, media_duration=60.0, frames=900, codec="h264", width=640, height=360,
            )
            pending.media_path(spool).write_bytes(f"footage {end}".encode() * 300)
            pending.save(spool)
            segments.append(commit_segment(self.ctx, pending, spool))
        return segments

    def events(self, action: str) -> list[AuditEvent]:
        with unit_of_work(self.engine) as session:
            return list(
                session.exec(
                    select(AuditEvent)
                    .where(AuditEvent.action == action)
                    .order_by(col(AuditEvent.seq))
                )
            )

    def runs(self) -> list[PurgeRun]:
        with unit_of_work(self.engine) as session:
            return list(session.exec(select(PurgeRun).order_by(col(PurgeRun.started_at))))

    def states(self, segments: list[Segment]) -> set[str]:
        with unit_of_work(self.engine) as session:
            return {
                s.state
                for s in session.exec(
                    select(Segment).where(col(Segment.id).in_([x.id for x in segments]))
                )
            }


def details(event: AuditEvent) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(event.details)
    return value


def pid_of(event: AuditEvent) -> int:
    return int(details(event)["instance"].rsplit(":", 1)[1])


@pytest.fixture
def deployment(engine: Engine, tmp_path: Path) -> Iterator[Deployment]:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    ctx = VaultContext(
        engine=engine,
        store=FilesystemStore(data_dir / "store"),
        keys=LocalKeyProvider(data_dir / "keys" / "kek.bin"),
    )
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCTV_")},
        "CCTV_DATA_DIR": str(data_dir),
        "CCTV_DATABASE_URL": database_url(engine),
        "CCTV_SCHEDULER_LEASE_POLL_SECONDS": "0.2",
    }
    deployment = Deployment(engine, data_dir, ctx, env)
    try:
        yield deployment
    finally:
        for scheduler in deployment.started:
            if scheduler.process.poll() is None:
                scheduler.process.kill()
            scheduler.process.wait(timeout=60)


def test_two_schedulers_one_purges_and_the_other_takes_over_after_kill_9(
    deployment: Deployment,
) -> None:
    now = utcnow()
    due = deployment.record(now - timedelta(days=1), count=4)
    kept = deployment.record(now + timedelta(days=1), count=2)
    # A purge every 4 seconds stands in for "every night", so a takeover's purge comes soon.
    cron = {"scheduler_purge_cron": "*/4 * * * * *"}
    a, b = deployment.start(**cron), deployment.start(**cron)
    by_pid = {a.pid: a, b.pid: b}

    (acquired,) = wait_for(lambda: deployment.events(LEASE_ACQUIRED_ACTION), 120, "a holder")
    holder = by_pid[pid_of(acquired)]
    waiter = b if holder is a else a
    wait_for(lambda: "another scheduler holds the lease" in waiter.text(), 60, "the waiter")
    wait_for(lambda: len(deployment.events(PURGE_ACTION)) >= 2, 60, "two purges by the holder")

    # Exactly one holds the lease and runs the purge; the other only waits.
    assert len(deployment.events(LEASE_ACQUIRED_ACTION)) == 1
    assert details(acquired)["purge_owed"] is True  # a fresh vault: the catch-up ran at once
    assert "scheduled purge run=" in holder.text()
    assert "scheduled purge run=" not in waiter.text()
    assert "took the lease" not in waiter.text()
    assert deployment.states(due) == {SegmentState.PURGED}
    assert deployment.states(kept) == {SegmentState.STORED}

    os.kill(holder.pid, signal.SIGKILL)
    assert holder.process.wait(timeout=60) == -signal.SIGKILL
    killed_at = utcnow()
    purges_before = len(deployment.events(PURGE_ACTION))

    second = wait_for(
        lambda: deployment.events(LEASE_ACQUIRED_ACTION)[1:], 60, "the waiter to take over"
    )[0]
    assert pid_of(second) == waiter.pid
    assert second.at >= killed_at - timedelta(seconds=1)
    more_due = deployment.record(utcnow() - timedelta(hours=1), count=2)
    wait_for(
        lambda: [e for e in deployment.events(PURGE_ACTION) if e.seq > second.seq],
        60,
        "a purge by the new holder",
    )
    assert len(deployment.events(PURGE_ACTION)) > purges_before
    wait_for(lambda: deployment.states(more_due) == {SegmentState.PURGED}, 60, "its purge")
    assert deployment.stop(waiter) == 0

    runs = deployment.runs()
    assert {r.trigger for r in runs} == {"scheduler"}
    # A run the kill cut short is closed by the next one; none is left running.
    assert {r.state for r in runs} <= {RunState.DONE, RunState.INTERRUPTED}
    finished = [r for r in runs if r.state == RunState.DONE]
    for earlier, later in zip(finished, finished[1:], strict=False):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at
    assert deployment.events(LEASE_RELEASED_ACTION)
    assert deployment.states(kept) == {SegmentState.STORED}
    key = SigningKey.load_or_create(deployment.data_dir / "keys" / "ledger.pem")
    report = verify(deployment.engine, deployment.ctx.store, [key.public])
    assert report.ok, report.problems


def test_a_scheduler_down_across_two_nights_purges_everything_due_once_at_start(
    deployment: Deployment,
) -> None:
    now = utcnow()
    # "Night" is a daily cron six hours ago in Tokyo, so the test never races a real 02:30.
    night = (now - timedelta(hours=6)).astimezone(TOKYO)
    cron = f"{night.minute} {night.hour} * * *"
    last_night = previous_fire_time(cron_trigger(cron, TOKYO), now)
    assert last_night is not None
    night_before = last_night - timedelta(days=1)
    # The last purge ran three nights ago; the scheduler was down for the two nights since.
    with unit_of_work(deployment.engine) as session:
        three_nights_ago = night_before - timedelta(days=1)
        session.add(
            PurgeRun(id=str(uuid.uuid4()), started_at=three_nights_ago, as_of=three_nights_ago,
                     finished_at=three_nights_ago, state=RunState.DONE, trigger="scheduler")
        )
    due_first_night = deployment.record(night_before - timedelta(hours=1), count=2)
    due_second_night = deployment.record(last_night - timedelta(hours=1), count=2)
    due_since = deployment.record(now - timedelta(minutes=30), count=1)
    not_due = deployment.record(now + timedelta(days=1), count=2)
    before = {r.id for r in deployment.runs()}

    scheduler = deployment.start(scheduler_purge_cron=cron)
    (acquired,) = wait_for(lambda: deployment.events(LEASE_ACQUIRED_ACTION), 120, "the lease")
    assert details(acquired)["purge_owed"] is True
    assert details(acquired)["last_scheduled_purge"] == last_night.isoformat()
    wait_for(lambda: deployment.events(PURGE_ACTION), 60, "the catch-up purge")
    assert deployment.stop(scheduler) == 0

    new = [r for r in deployment.runs() if r.id not in before]
    assert len(new) == 1  # once, for both nights
    assert new[0].state == RunState.DONE and new[0].trigger == "scheduler"
    assert new[0].purged == 5
    for segments in (due_first_night, due_second_night, due_since):
        assert deployment.states(segments) == {SegmentState.PURGED}
    assert deployment.states(not_due) == {SegmentState.STORED}

    # Started again the same day: nothing is owed, nothing runs twice.
    again = deployment.start(scheduler_purge_cron=cron)
    second = wait_for(lambda: deployment.events(LEASE_ACQUIRED_ACTION)[1:], 120, "the lease")[0]
    assert details(second)["purge_owed"] is False
    assert deployment.stop(again) == 0
    assert len([r for r in deployment.runs() if r.id not in before]) == 1
