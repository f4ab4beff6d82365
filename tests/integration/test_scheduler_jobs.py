"""The scheduler's jobs do what they say, on SQLite and PostgreSQL, with a set clock.

Footage is committed through the real protocol about 120 days before the real "now", so its
90-day retention ended a month ago; the vault's own clock (``FixedClock``, which the filesystem
store also judges its locks by) decides what is due.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from scheduler import jobs
from scheduler.runner import SchedulePlan, decide_owed
from scheduler.triggers import previous_fire_time, resolve_timezone
from tests.support.configs import SITE_AND_POLICY
from vault import ledger
from vault.catalog import sync_config
from vault.checkpoints import verify
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.ledger import LedgerWriter
from vault.lifecycle import VaultContext, commit_segment
from vault.models import (
    AccessRequest,
    AuditCheckpoint,
    AuditEvent,
    Grant,
    Hold,
    PurgeRun,
    Segment,
    SegmentState,
)
from vault.pending import PendingSegment
from vault.purge import RunState
from vault.signing import SigningKey
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock, utcnow

REAL_NOW = utcnow().replace(microsecond=0)
T0 = REAL_NOW - timedelta(days=120)  # when the footage was recorded
MIN = timedelta(minutes=1)
RETENTION = timedelta(days=90)  # the "pci" policy of SITE_AND_POLICY
TOKYO = resolve_timezone("Asia/Tokyo")

CONFIG = SITE_AND_POLICY + """
[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }
"""


@dataclass
class Vault:
    ctx: VaultContext
    clock: FixedClock
    key: SigningKey
    spool: Path
    store: FilesystemStore
    audit: LedgerWriter

    def record(self, start: datetime, count: int = 1) -> list[Segment]:
        segments = []
        for i in range(count):
            begin = start + i * MIN
            pending = PendingSegment(
                segment_id=str(uuid.uuid4()), camera_id="cam-a", run_id="run-a",
                run_started_at=start, restamped=False, start=begin, state="closed",
                end=begin + MIN, media_duration=60.0, frames=900, codec="h264", width=640,
                height=360,
            )
            pending.media_path(self.spool).write_bytes(f"footage {begin}".encode() * 300)
            pending.save(self.spool)
            segments.append(commit_segment(self.ctx, pending, self.spool))
        return segments

    def events(self, action: str) -> list[AuditEvent]:
        with unit_of_work(self.ctx.engine) as session:
            return list(
                session.exec(
                    select(AuditEvent)
                    .where(AuditEvent.action == action)
                    .order_by(col(AuditEvent.seq))
                )
            )

    def note(self, action: str = "test.event") -> None:
        """Some activity in the ledger (as a person's request would leave)."""
        with unit_of_work(self.ctx.engine) as session:
            ledger.append(session, at=self.clock.now(), actor="someone", role="operator",
                          action=action, target="x", decision="allowed")


@pytest.fixture
def vault(engine: Engine, tmp_path: Path) -> Iterator[Vault]:
    clock = FixedClock(T0)
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
    store = FilesystemStore(tmp_path / "store", clock=clock.now)
    ctx = VaultContext(
        engine=engine, store=store, keys=LocalKeyProvider(tmp_path / "kek.bin"), clock=clock
    )
    spool = tmp_path / "spool"
    spool.mkdir()
    with LedgerWriter(engine, write_timeout_s=30) as audit:
        yield Vault(ctx, clock, SigningKey.load_or_create(tmp_path / "ledger.pem"), spool, store,
                    audit)


# -- ledger checkpoint -------------------------------------------------------------------------


def head_seq(vault: Vault) -> int:
    with unit_of_work(vault.ctx.engine) as session:
        seq = session.exec(select(AuditEvent.seq).order_by(col(AuditEvent.seq).desc())).first()
    return seq or 0


def test_checkpoint_job_anchors_new_events_and_only_new_ones(vault: Vault) -> None:
    def run() -> AuditCheckpoint | None:
        return jobs.ledger_checkpoint(vault.ctx, signing_key=vault.key, audit=vault.audit)

    assert head_seq(vault) > 0  # the camera config's own events
    vault.note()
    head = head_seq(vault)
    first = run()
    assert first is not None and first.seq == head
    assert vault.store.head(first.object_key) is not None
    (announced,) = vault.events(jobs.CHECKPOINT_ACTION)
    assert announced.seq == head + 1 and announced.actor == "system:scheduler"
    assert json.loads(announced.details)["seq"] == head

    # Only the job's own announcement since: nothing new, no checkpoint, no event (an idle
    # vault does not write two entries every five minutes forever).
    vault.clock.advance(timedelta(minutes=5))
    assert run() is None
    assert len(vault.events(jobs.CHECKPOINT_ACTION)) == 1

    vault.note()
    vault.clock.advance(timedelta(minutes=5))
    second = run()
    assert second is not None and second.seq == head + 2  # anchors the announcement too
    report = verify(vault.ctx.engine, vault.ctx.store, [vault.key.public])
    assert report.ok, report.problems
    assert report.checkpoints == 2
    with unit_of_work(vault.ctx.engine) as session:
        assert [c.seq for c in session.exec(select(AuditCheckpoint))] == [head, head + 2]


def test_checkpoint_job_on_an_empty_ledger(engine: Engine, tmp_path: Path) -> None:
    ctx = VaultContext(
        engine=engine, store=FilesystemStore(tmp_path / "store"),
        keys=LocalKeyProvider(tmp_path / "kek.bin"),
    )
    with LedgerWriter(engine) as audit:
        key = SigningKey.load_or_create(tmp_path / "ledger.pem")
        assert jobs.ledger_checkpoint(ctx, signing_key=key, audit=audit) is None
    with unit_of_work(engine) as session:
        assert session.exec(select(AuditEvent)).first() is None


# -- integrity sweep ---------------------------------------------------------------------------


def test_sweep_verifies_a_sample_and_reports_each_failure(
    vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    segments = vault.record(T0, count=4)
    vault.clock.set(T0 + timedelta(days=1))
    clean = jobs.integrity_sweep(vault.ctx, sample=100, audit=vault.audit)
    assert clean.ok and clean.sampled == 4 and clean.verified == 4
    assert clean.bytes_verified == sum(s.bytes for s in segments)
    (summary,) = vault.events(jobs.SWEEP_ACTION)
    assert summary.decision == "ok" and json.loads(summary.details)["verified"] == 4

    assert jobs.integrity_sweep(vault.ctx, sample=2, audit=vault.audit).sampled == 2

    # One flipped byte in a stored object; another object deleted behind the vault's back.
    flipped, missing = segments[1], segments[2]
    path = vault.store.root / "objects" / flipped.object_key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    (vault.store.root / "objects" / missing.object_key).unlink()

    caplog.set_level(logging.ERROR, logger="scheduler.jobs")
    report = jobs.integrity_sweep(vault.ctx, sample=100, audit=vault.audit)
    assert not report.ok
    assert sorted(report.failed) == sorted([flipped.id, missing.id])
    assert report.verified == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(flipped.id in r.getMessage() for r in errors)
    assert any(missing.id in r.getMessage() for r in errors)
    failures = {e.target: e for e in vault.events(jobs.INTEGRITY_FAILED_ACTION)}
    assert set(failures) == {f"segment:{flipped.id}", f"segment:{missing.id}"}
    assert failures[f"segment:{flipped.id}"].decision == "failed"
    assert json.loads(failures[f"segment:{flipped.id}"].details)["kind"] == "integrity"
    assert json.loads(failures[f"segment:{missing.id}"].details)["kind"] == "not-found"
    last = vault.events(jobs.SWEEP_ACTION)[-1]
    assert last.decision == "failed"
    assert sorted(json.loads(last.details)["failed_segments"]) == sorted([flipped.id, missing.id])


def test_sweep_of_an_empty_vault(vault: Vault) -> None:
    report = jobs.integrity_sweep(vault.ctx, sample=10, audit=vault.audit)
    assert report.ok and report.sampled == 0
    assert vault.events(jobs.SWEEP_ACTION)[0].decision == "ok"


# -- expiry ------------------------------------------------------------------------------------


def add_grant(vault: Vault, expires_at: datetime, *, revoked_at: datetime | None = None) -> str:
    request_id, grant_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = expires_at - timedelta(minutes=60)
    with unit_of_work(vault.ctx.engine) as session:
        session.add(
            AccessRequest(
                id=request_id, requester="op-1", requester_role="operator",
                cameras='["cam-a"]', sites='["tokyo-1"]', start=T0, end=T0 + MIN,
                purpose="security_review", reason="incident 42", state="granted",
                decided_by="sup-1", decided_at=created, created_at=created,
            )
        )
        session.flush()
        session.add(
            Grant(
                id=grant_id, request_id=request_id, holder="op-1", cameras='["cam-a"]',
                start=T0, end=T0 + MIN, purpose="security_review", granted_by="sup-1",
                created_at=created, expires_at=expires_at, revoked_at=revoked_at,
                revoked_by="op-1" if revoked_at else None,
            )
        )
    return grant_id


def announced(vault: Vault) -> list[str]:
    return [e.target.removeprefix("grant:") for e in vault.events(jobs.GRANT_EXPIRED_ACTION)]


def test_expired_grants_are_announced_once(vault: Vault) -> None:
    now = T0 + timedelta(days=2)
    vault.clock.set(now)
    expired = add_grant(vault, now - MIN)
    old = add_grant(vault, now - timedelta(days=1))
    at_now = add_grant(vault, now)  # expires_at is exclusive: at that instant it is over
    later = add_grant(vault, now + 10 * MIN)
    add_grant(vault, now - 2 * MIN, revoked_at=now - 30 * MIN)  # revoked, never expired

    def run() -> jobs.ExpiryReport:
        return jobs.expire_grants_and_holds(vault.ctx, audit=vault.audit)

    assert set(run().grants) == {expired, old, at_now}
    assert sorted(announced(vault)) == sorted([expired, old, at_now])
    assert run().grants == ()  # again: nothing twice

    vault.clock.advance(11 * MIN)
    # A grant whose row committed late, with an expiry before the last one announced.
    late = add_grant(vault, now - 5 * MIN)
    assert set(run().grants) == {later, late}
    assert run().grants == ()
    names = announced(vault)
    assert sorted(names) == sorted([expired, old, at_now, later, late])
    assert len(names) == len(set(names))
    event = vault.events(jobs.GRANT_EXPIRED_ACTION)[0]
    details = json.loads(event.details)
    assert event.actor == "system:scheduler" and event.purpose == "security_review"
    assert details["holder"] == "op-1" and details["cameras"] == ["cam-a"]


def add_hold(
    vault: Vault, kind: str, expires_at: datetime | None, start: datetime = T0
) -> str:
    hold_id = str(uuid.uuid4())
    with unit_of_work(vault.ctx.engine) as session:
        session.add(
            Hold(
                id=hold_id, kind=kind, cameras='["cam-a"]', start=start, end=start + 10 * MIN,
                reason="incident 42", placed_by="sup-1", placed_at=T0, expires_at=expires_at,
            )
        )
    return hold_id


def test_expired_security_hold_is_released_and_its_footage_purged_after(vault: Vault) -> None:
    segments = vault.record(T0, count=2)
    past_retention = T0 + RETENTION + timedelta(days=1)
    security = add_hold(vault, "security", past_retention + timedelta(hours=1))
    legal = add_hold(vault, "legal", None, start=T0 + timedelta(hours=1))  # other footage
    vault.clock.set(past_retention)
    held = jobs.nightly_purge(vault.ctx, signing_key=vault.key, audit=vault.audit)
    assert held.purged == 0 and held.held_back == len(segments)

    def run() -> jobs.ExpiryReport:
        return jobs.expire_grants_and_holds(vault.ctx, audit=vault.audit)

    assert run().holds == ()  # not yet expired

    vault.clock.advance(timedelta(hours=2))
    report = run()
    assert report.holds == (security,)
    assert run().holds == ()
    with unit_of_work(vault.ctx.engine) as session:
        released = session.get(Hold, security)
        kept = session.get(Hold, legal)
        assert released is not None and released.released_at is not None
        assert kept is not None and kept.released_at is None
    (event,) = [e for e in vault.events("holds.expire") if e.target.endswith(security)]
    assert event.actor == "system:expiry"
    # The next purge takes what the hold kept.
    assert jobs.nightly_purge(vault.ctx, signing_key=vault.key, audit=vault.audit).purged == 2


# -- purge -------------------------------------------------------------------------------------


def test_purge_job_purges_what_is_due_and_says_who_started_it(vault: Vault) -> None:
    due = vault.record(T0, count=3)
    not_due = vault.record(T0 + timedelta(days=10), count=2)
    vault.clock.set(T0 + RETENTION + timedelta(days=2))
    report = jobs.nightly_purge(vault.ctx, signing_key=vault.key, audit=vault.audit)
    assert report.purged == 3 and report.state == RunState.DONE
    with unit_of_work(vault.ctx.engine) as session:
        states = {s.id: s.state for s in session.exec(select(Segment))}
        run = session.get(PurgeRun, report.run_id)
    assert {states[s.id] for s in due} == {SegmentState.PURGED}
    assert {states[s.id] for s in not_due} == {SegmentState.STORED}
    assert run is not None and run.trigger == "scheduler"
    (event,) = vault.events(jobs.PURGE_ACTION)
    assert event.target == f"purge-run:{report.run_id}" and event.actor == "system:scheduler"
    assert json.loads(event.details)["purged"] == 3


# -- catch-up decision -------------------------------------------------------------------------


def plan() -> SchedulePlan:
    return SchedulePlan(
        timezone=TOKYO, purge_cron="30 2 * * *", sweep_cron="0 4 * * *",
        checkpoint_every=timedelta(minutes=5), expiry_every=timedelta(minutes=1),
        sweep_sample=10, misfire_grace=timedelta(hours=6), lease_poll_s=1.0,
    )


def test_a_purge_is_owed_once_for_any_number_of_missed_nights(vault: Vault) -> None:
    vault.record(T0, count=1)
    start = T0 + RETENTION + timedelta(days=1)
    vault.clock.set(start)
    first = decide_owed(vault.ctx, plan(), start)
    assert first.purge and first.last_purge_as_of is None  # a fresh vault owes its first run
    assert first.last_scheduled_purge == previous_fire_time(plan().purge_trigger(), start)

    jobs.nightly_purge(vault.ctx, signing_key=vault.key, audit=vault.audit)
    assert not decide_owed(vault.ctx, plan(), start).purge

    # Down across two nights: owed, once; one run as of now covers both.
    later = start + timedelta(days=2, hours=1)
    vault.clock.set(later)
    assert decide_owed(vault.ctx, plan(), later).purge
    jobs.nightly_purge(vault.ctx, signing_key=vault.key, audit=vault.audit)
    assert not decide_owed(vault.ctx, plan(), later).purge


def test_a_failed_or_dry_run_does_not_settle_a_night(vault: Vault) -> None:
    now = T0 + RETENTION
    vault.clock.set(now)
    with unit_of_work(vault.ctx.engine) as session:
        session.add(
            PurgeRun(id=str(uuid.uuid4()), started_at=now, as_of=now, state=RunState.FAILED,
                     trigger="scheduler")
        )
    assert decide_owed(vault.ctx, plan(), now).purge
    from vault.purge import run_purge

    run_purge(vault.ctx, signing_key=vault.key, trigger="cli", dry_run=True)
    assert decide_owed(vault.ctx, plan(), now).purge
    run_purge(vault.ctx, signing_key=vault.key, trigger="cli")  # a person's run counts
    assert not decide_owed(vault.ctx, plan(), now).purge


def test_the_sweep_is_owed_when_its_last_night_passed_without_one(vault: Vault) -> None:
    now = T0 + timedelta(days=1)
    vault.clock.set(now)
    assert decide_owed(vault.ctx, plan(), now).sweep
    jobs.integrity_sweep(vault.ctx, sample=1, audit=vault.audit)
    assert not decide_owed(vault.ctx, plan(), now).sweep
    assert decide_owed(vault.ctx, plan(), now + timedelta(days=1)).sweep
