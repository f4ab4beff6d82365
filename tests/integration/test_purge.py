"""The purge (vault.purge) on SQLite and PostgreSQL, filesystem and S3 (moto), with a set clock.

Footage is committed through the real commit protocol (object, thumbnail, S3 retention lock
until ``retention_until``) about 120 days before the real "now": its retention (90 days) ended
about a month ago, so moto — which judges locks by the real clock — lets the purge delete it,
while the vault's own clock (``FixedClock``) decides what is due.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.support.configs import SITE_AND_POLICY
from vault import ledger
from vault.catalog import sync_config
from vault.check import run_check
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.errors import Conflict, IntegrityError, InvalidInput, NotFound
from vault.lifecycle import VaultContext, commit_segment, read_segment
from vault.models import AuditEvent, Hold, PurgeRun, Segment, SegmentState, Tombstone
from vault.pending import PendingSegment
from vault.purge import (
    CERTIFICATE_PREFIX,
    METHOD,
    PurgeReport,
    RunState,
    _exclusive,
    certificate_key,
    run_purge,
    verify_certificate,
    verify_run,
)
from vault.signing import SigningKey
from vault.store.base import ByteSource, DeleteFailure, ObjectInfo, ObjectStore
from vault.store.fs import LOCK_ATTRIBUTE, FilesystemStore
from vault.store.s3 import S3Store
from vault.timerange import FixedClock, utcnow

REAL_NOW = utcnow().replace(microsecond=0)
T0 = REAL_NOW - timedelta(days=120)  # when the footage was recorded
MIN = timedelta(minutes=1)
RETENTION = timedelta(days=90)  # the "pci" policy of SITE_AND_POLICY

CONFIG = SITE_AND_POLICY + """
[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }

[[cameras]]
id = "cam-b"
site = "tokyo-1"
name = "Loading dock"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.6/stream1" }
"""


@dataclass
class Vault:
    ctx: VaultContext
    clock: FixedClock
    key: SigningKey
    spool: Path

    def record(
        self, camera: str = "cam-a", start: datetime = T0, count: int = 1, thumb: bool = True
    ) -> list[Segment]:
        """Commit ``count`` one-minute segments from ``start`` through the real protocol."""
        return record(self.ctx, self.spool, camera, start, count, thumb)

    def purge(self, at: datetime, **kwargs: Any) -> PurgeReport:
        self.clock.set(at)
        return run_purge(self.ctx, signing_key=self.key, trigger="test", **kwargs)


def record(
    ctx: VaultContext, spool: Path, camera: str, start: datetime, count: int, thumb: bool = True
) -> list[Segment]:
    segments = []
    for i in range(count):
        begin = start + i * MIN
        pending = PendingSegment(
            segment_id=str(uuid.uuid4()), camera_id=camera, run_id=f"run-{camera}",
            run_started_at=start, restamped=False, start=begin, state="closed",
            end=begin + MIN, media_duration=60.0, frames=900, codec="h264", width=640,
            height=360,
        )
        pending.media_path(spool).write_bytes(f"{camera} footage {begin.isoformat()}".encode()
                                              * 200)
        if thumb:
            pending.thumb_path(spool).write_bytes(b"\xff\xd8thumb " + begin.isoformat().encode())
        pending.save(spool)
        segments.append(commit_segment(ctx, pending, spool))
    return segments


def make_vault(engine: Engine, store: ObjectStore, tmp_path: Path, clock: FixedClock) -> Vault:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
    ctx = VaultContext(
        engine=engine, store=store, keys=LocalKeyProvider(tmp_path / "kek.bin"), clock=clock
    )
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return Vault(ctx, clock, SigningKey.load_or_create(tmp_path / "ledger.pem"), spool)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
def vault_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock
) -> ObjectStore:
    if request.param == "fs":
        # The filesystem store judges its locks by the vault's clock, as in production.
        return FilesystemStore(tmp_path / "store", clock=clock.now)
    backend: ObjectStore = request.getfixturevalue("s3_store")
    return backend


@pytest.fixture
def vault(engine: Engine, vault_store: ObjectStore, tmp_path: Path, clock: FixedClock) -> Vault:
    return make_vault(engine, vault_store, tmp_path, clock)


# -- helpers -----------------------------------------------------------------------------------


def rows(ctx: VaultContext) -> dict[str, Segment]:
    with unit_of_work(ctx.engine) as session:
        return {s.id: s for s in session.exec(select(Segment))}


def states(ctx: VaultContext) -> dict[str, str]:
    return {sid: s.state for sid, s in rows(ctx).items()}


def keys_of(segment: Segment) -> list[str]:
    return [k for k in (segment.object_key, segment.thumb_key) if k]


def assert_gone(ctx: VaultContext, segment: Segment) -> None:
    """Every key of the segment is gone; on S3 not one version (or delete marker) is left."""
    for key in keys_of(segment):
        assert ctx.store.head(key) is None, key
        if isinstance(ctx.store, S3Store):
            assert ctx.store.version_ids(key) == [], key


def assert_proven(vault: Vault, report: PurgeReport) -> None:
    """The run's certificate verifies, agrees with tombstones and ledger; check is clean."""
    assert report.run_id is not None and report.certificate_key is not None
    verdict = verify_run(vault.ctx, report.run_id, [vault.key.public])
    assert verdict.ok, verdict.problems
    check = run_check(vault.ctx)
    assert check.ok, check.violations
    with unit_of_work(vault.ctx.engine) as session:
        assert ledger.verify_chain(session) is None


def certificate(vault: Vault, report: PurgeReport) -> dict[str, Any]:
    assert report.certificate_key is not None
    data = vault.ctx.store.get(report.certificate_key)
    assert hashlib.sha256(data).hexdigest() == report.certificate_sha256
    verified = verify_certificate(data, vault.key.public_pem())
    return dict(verified.statement)


def add_hold(
    ctx: VaultContext,
    cameras: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    kind: str = "legal",
    expires_at: datetime | None = None,
) -> str:
    hold_id = str(uuid.uuid4())
    with unit_of_work(ctx.engine) as session:
        session.add(
            Hold(
                id=hold_id, kind=kind, cameras=json.dumps(list(cameras)), start=start, end=end,
                reason="incident 4711", placed_by="counsel", placed_at=T0,
                expires_at=expires_at,
            )
        )
    return hold_id


def release(ctx: VaultContext, hold_id: str, at: datetime) -> None:
    with unit_of_work(ctx.engine) as session:
        hold = session.get(Hold, hold_id)
        assert hold is not None
        hold.released_at = at
        hold.released_by = "privacy-officer"
        session.add(hold)


def audit_actions(ctx: VaultContext) -> list[str]:
    with unit_of_work(ctx.engine) as session:
        return list(session.exec(select(AuditEvent.action).order_by(col(AuditEvent.seq))))


# -- retention: kept until the deadline, gone at the first run after ---------------------------


def test_kept_until_retention_then_purged_at_the_first_run_after(vault: Vault) -> None:
    early = vault.record("cam-a", T0, 3)
    late = vault.record("cam-b", T0 + timedelta(days=2), 2, thumb=False)
    deadline = early[0].retention_until
    assert deadline == T0 + MIN + RETENTION

    before = vault.purge(deadline - timedelta(microseconds=1))
    assert (before.purged, before.held_back, before.failed) == (0, 0, ())
    assert set(states(vault.ctx).values()) == {SegmentState.STORED}
    assert_proven(vault, before)
    assert certificate(vault, before)["segments"] == []

    # At the deadline of the first segment exactly: that one goes, not its neighbours.
    first = vault.purge(deadline)
    assert first.purged == 1
    assert states(vault.ctx)[early[0].id] == SegmentState.PURGED
    assert_gone(vault.ctx, early[0])
    assert_proven(vault, first)

    # A day later the rest of cam-a is due; cam-b (recorded two days later) is not.
    second = vault.purge(early[-1].retention_until + timedelta(days=1))
    assert second.purged == 2
    assert [c.camera_id for c in second.cameras] == ["cam-a"]
    after = rows(vault.ctx)
    for segment in early:
        assert after[segment.id].state == SegmentState.PURGED
        assert after[segment.id].wrapped_dek is None
        assert after[segment.id].thumb_wrapped_dek is None
        assert_gone(vault.ctx, segment)
    assert after[early[0].id].purged_at == deadline
    assert after[early[1].id].purged_at == early[-1].retention_until + timedelta(days=1)
    for segment in late:
        assert after[segment.id].state == SegmentState.STORED
        assert read_segment(vault.ctx, after[segment.id])  # untouched and readable
    assert_proven(vault, second)

    statement = certificate(vault, second)
    assert statement["method"] == METHOD == "delete + cryptographic erase"
    assert statement["run_id"] == second.run_id
    assert statement["state"] == RunState.DONE
    assert statement["key_id"] == vault.key.key_id
    listed = {s["id"]: s for s in statement["segments"]}
    assert set(listed) == {s.id for s in early[1:]}
    for segment in early[1:]:
        assert listed[segment.id]["sha256"] == segment.sha256
        assert listed[segment.id]["object_key"] == segment.object_key
        assert listed[segment.id]["thumb_key"] == segment.thumb_key
    assert statement["totals"]["purged"] == 2
    assert statement["totals"]["bytes"] == sum(s.bytes for s in early[1:])

    third = vault.purge(late[-1].retention_until)
    assert third.purged == 2
    assert_proven(vault, third)
    with unit_of_work(vault.ctx.engine) as session:
        stones = list(session.exec(select(Tombstone)))
    assert len(stones) == 5
    assert all(t.verified and t.method == METHOD for t in stones)
    assert {t.purge_run_id for t in stones} == {first.run_id, second.run_id, third.run_id}


def test_missed_nights_catch_up_once(vault: Vault) -> None:
    segments = [
        *vault.record("cam-a", T0, 2),
        *vault.record("cam-a", T0 + timedelta(days=1), 2),
        *vault.record("cam-b", T0 + timedelta(days=3), 2),
    ]
    # The scheduler was down for a week: the next run purges everything due since, once.
    late = segments[-1].retention_until + timedelta(days=7)
    report = vault.purge(late)
    assert report.purged == 6
    assert {c.camera_id: c.segments for c in report.cameras} == {"cam-a": 4, "cam-b": 2}
    cam_a = next(c for c in report.cameras if c.camera_id == "cam-a")
    assert cam_a.first_start == T0 and cam_a.last_end == T0 + timedelta(days=1) + 2 * MIN
    again = vault.purge(late + timedelta(hours=1))
    assert again.purged == 0
    assert_proven(vault, report)
    assert_proven(vault, again)
    for segment in segments:
        assert_gone(vault.ctx, segment)
    actions = audit_actions(vault.ctx)
    assert actions.count("purge.batch") == 1  # 6 segments, one batch
    assert actions.count("purge.run") == 2


def test_batches_of_at_most_batch_size_with_one_ledger_event_each(vault: Vault) -> None:
    segments = vault.record("cam-a", T0, 7, thumb=False)
    report = vault.purge(segments[-1].retention_until, batch_size=3)
    assert report.purged == 7
    with unit_of_work(vault.ctx.engine) as session:
        events = list(
            session.exec(select(AuditEvent).where(AuditEvent.action == "purge.batch")
                         .order_by(col(AuditEvent.seq)))
        )
    details = [json.loads(e.details) for e in events]
    assert [len(d["segments"]) for d in details] == [3, 3, 1]
    assert all(e.actor == "system:purge" and e.target == f"purge-run:{report.run_id}"
               for e in events)
    listed = [sid for d in details for sid in d["segments"]]
    assert sorted(listed) == sorted(s.id for s in segments)
    # Within what is due, batches go in object-key order (few directories or prefixes each).
    assert listed == [s.id for s in sorted(segments, key=lambda s: s.object_key)]
    assert_proven(vault, report)


def test_each_batch_is_marked_before_its_objects_go_and_recorded_after(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store work of one batch overlaps the catalog work of its neighbours; each batch
    # still goes mark (commit) -> delete -> verify -> record (commit).
    segments = vault.record("cam-a", T0, 7)
    owner = {k: s.id for s in segments for k in (s.object_key, s.thumb_key) if k}
    real = vault.ctx.store.delete_many
    seen: list[set[str]] = []

    def observed(keys: Sequence[str]) -> list[DeleteFailure]:
        before = states(vault.ctx)
        seen.append({before[owner[k]] for k in keys})
        return real(keys)

    monkeypatch.setattr(vault.ctx.store, "delete_many", observed)
    report = vault.purge(segments[-1].retention_until, batch_size=3)

    assert report.purged == 7
    assert seen == [{"purging"}] * 6  # segments, then thumbnails, of each of 3 batches
    for segment in segments:
        assert_gone(vault.ctx, segment)
    assert_proven(vault, report)


# -- holds win ---------------------------------------------------------------------------------


def test_held_footage_survives_any_number_of_runs_and_goes_after_release(vault: Vault) -> None:
    held = vault.record("cam-a", T0, 2)
    free = vault.record("cam-a", T0 + timedelta(hours=1), 2)
    other_camera = vault.record("cam-b", T0, 1)
    hold_id = add_hold(vault.ctx, ["cam-a"], T0 + 30 * timedelta(seconds=1), T0 + 10 * MIN)
    due = free[-1].retention_until

    reports = [vault.purge(due + timedelta(days=n)) for n in range(4)]
    first = reports[0]
    assert first.purged == 3  # the free cam-a footage and cam-b's
    assert first.held_back == 2
    assert [(h.hold_id, h.kind, h.segments, dict(h.cameras)) for h in first.holds] == [
        (hold_id, "legal", 2, {"cam-a": 2})
    ]
    for report in reports:
        assert_proven(vault, report)
        held_back = certificate(vault, report)["held_back"]
        assert held_back["segments"] == 2
        assert held_back["holds"] == [
            {"id": hold_id, "kind": "legal", "segments": 2, "bytes": sum(s.bytes for s in held)}
        ]
    assert all(r.purged == 0 for r in reports[1:])
    now = rows(vault.ctx)
    for segment in held:
        assert now[segment.id].state == SegmentState.STORED
        assert read_segment(vault.ctx, now[segment.id])
    for segment in (*free, *other_camera):
        assert_gone(vault.ctx, segment)

    release(vault.ctx, hold_id, due + timedelta(days=4))
    after = vault.purge(due + timedelta(days=5))
    assert after.purged == 2 and after.held_back == 0
    for segment in held:
        assert_gone(vault.ctx, segment)
    assert_proven(vault, after)


def test_security_hold_keeps_footage_until_it_expires(vault: Vault) -> None:
    segments = vault.record("cam-b", T0, 1)
    due = segments[0].retention_until
    add_hold(vault.ctx, ["cam-b"], T0, T0 + MIN, kind="security",
             expires_at=due + timedelta(days=2))
    assert vault.purge(due + timedelta(days=1)).held_back == 1
    assert states(vault.ctx)[segments[0].id] == SegmentState.STORED
    report = vault.purge(due + timedelta(days=2))  # expires_at is exclusive: expired now
    assert report.purged == 1
    assert_proven(vault, report)


def test_a_hold_placed_after_planning_still_wins(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold is read again in the transaction that marks a batch (P2)."""
    import vault.purge as purge

    segments = vault.record("cam-a", T0, 2)
    real_plan = purge.plan

    def plan_then_hold(*args: Any, **kwargs: Any) -> Any:
        decided = real_plan(*args, **kwargs)
        add_hold(vault.ctx, ["cam-a"], T0, T0 + MIN)  # covers the first segment only
        return decided

    monkeypatch.setattr(purge, "plan", plan_then_hold)
    report = vault.purge(segments[-1].retention_until)
    assert report.purged == 1 and report.held_back == 1
    assert states(vault.ctx)[segments[0].id] == SegmentState.STORED
    assert_proven(vault, report)


# -- the store's locks: refused deletes stay stored --------------------------------------------


def test_store_legal_hold_blocks_deletion(vault: Vault) -> None:
    """A legal hold on the object (no hold row, e.g. placed in the store directly) makes the
    store refuse: the segment stays stored, is counted as failed, and goes once lifted."""
    segments = vault.record("cam-a", T0, 2)
    vault.ctx.store.set_legal_hold(segments[0].object_key, True)
    due = segments[-1].retention_until

    report = vault.purge(due)
    assert report.purged == 1
    assert [(f.segment_id, f.key) for f in report.failed] == [
        (segments[0].id, segments[0].object_key)
    ]
    assert states(vault.ctx)[segments[0].id] == SegmentState.STORED
    row = rows(vault.ctx)[segments[0].id]
    assert row.wrapped_dek is not None
    assert read_segment(vault.ctx, row)  # footage and thumbnail untouched
    assert vault.ctx.store.head(segments[0].thumb_key or "") is not None
    assert_proven(vault, report)
    statement = certificate(vault, report)
    assert statement["totals"]["failed"] == 1
    assert [r["segment"] for r in statement["refused"]] == [segments[0].id]

    vault.ctx.store.set_legal_hold(segments[0].object_key, False)
    later = vault.purge(due + timedelta(days=1))
    assert later.purged == 1 and later.failed == ()
    assert_gone(vault.ctx, segments[0])
    assert_proven(vault, later)


@pytest.mark.s3
def test_s3_refuses_deleting_before_retention_until(
    engine: Engine, s3_store: S3Store, tmp_path: Path
) -> None:
    """Recorded today, the S3 lock runs 90 days into the real future. Even a vault clock that
    says the retention has ended (skewed, or a catalog edited behind our back) cannot delete:
    the store refuses, and the segment stays stored and readable."""
    clock = FixedClock(REAL_NOW)
    vault = make_vault(engine, s3_store, tmp_path, clock)
    segments = vault.record("cam-a", REAL_NOW, 1)
    info = s3_store.head(segments[0].object_key)
    assert info is not None and info.retain_until == segments[0].retention_until
    # The store itself, asked directly:
    refused = s3_store.delete_many([segments[0].object_key])
    assert [f.key for f in refused] == [segments[0].object_key]

    report = vault.purge(segments[0].retention_until + timedelta(days=1))
    assert report.purged == 0
    assert [f.segment_id for f in report.failed] == [segments[0].id]
    assert "lock" in report.failed[0].reason.lower()
    row = rows(vault.ctx)[segments[0].id]
    assert row.state == SegmentState.STORED and row.wrapped_dek is not None
    assert read_segment(vault.ctx, row)
    assert s3_store.version_ids(segments[0].object_key)
    assert_proven(vault, report)


def test_an_object_of_unknown_lock_is_refused_alone_and_the_run_goes_on(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """A filesystem object that lost its lock attribute (e.g. restored without extended
    attributes) may be hiding a lock: the store refuses to delete it, that segment stays
    stored and is counted as failed, and the rest of the batch — and of the run — is purged."""
    store = FilesystemStore(tmp_path / "store", clock=clock.now)
    vault = make_vault(engine, store, tmp_path, clock)
    segments = vault.record("cam-a", T0, 3)
    stripped = segments[1]
    os.removexattr(store.root / "objects" / stripped.object_key, LOCK_ATTRIBUTE)
    due = segments[-1].retention_until

    report = vault.purge(due)
    assert report.purged == 2
    assert [(f.segment_id, f.key) for f in report.failed] == [(stripped.id, stripped.object_key)]
    assert "no lock metadata" in report.failed[0].reason
    assert states(vault.ctx)[stripped.id] == SegmentState.STORED
    assert read_segment(vault.ctx, rows(vault.ctx)[stripped.id])  # footage untouched
    for gone in (segments[0], segments[2]):
        assert_gone(vault.ctx, gone)
    verdict = verify_run(vault.ctx, report.run_id or "", [vault.key.public])
    assert verdict.ok, verdict.problems
    # check names the object (and only it) instead of stopping at it.
    check = run_check(vault.ctx)
    assert [(v.kind, v.target) for v in check.violations] == [
        ("lock-unknown", stripped.object_key)
    ]
    assert check.decrypted == 1  # its footage still verifies
    # Every later run refuses it again, and says so, until someone restores its lock.
    again = vault.purge(due + timedelta(days=1))
    assert again.purged == 0 and [f.segment_id for f in again.failed] == [stripped.id]


def test_filesystem_store_refuses_deleting_before_retention_until(
    engine: Engine, tmp_path: Path
) -> None:
    """The same on the filesystem store, whose lock follows the real clock here."""
    clock = FixedClock(REAL_NOW)
    store = FilesystemStore(tmp_path / "store")  # judges locks by the real time
    vault = make_vault(engine, store, tmp_path, clock)
    segments = vault.record("cam-a", REAL_NOW, 1)
    report = vault.purge(segments[0].retention_until)
    assert report.purged == 0 and len(report.failed) == 1
    assert states(vault.ctx)[segments[0].id] == SegmentState.STORED
    assert_proven(vault, report)


# -- bounds and refusals -----------------------------------------------------------------------


def test_a_real_run_cannot_look_ahead(vault: Vault) -> None:
    segments = vault.record("cam-a", T0, 1)
    vault.clock.set(T0 + timedelta(days=1))
    with pytest.raises(InvalidInput, match="after now"):
        run_purge(vault.ctx, signing_key=vault.key, trigger="test",
                  as_of=segments[0].retention_until)
    with pytest.raises(InvalidInput):
        run_purge(vault.ctx, signing_key=vault.key, trigger="test",
                  as_of=segments[0].retention_until.replace(tzinfo=None))
    with pytest.raises(InvalidInput):
        run_purge(vault.ctx, signing_key=vault.key, trigger="")
    with pytest.raises(InvalidInput):
        run_purge(vault.ctx, signing_key=vault.key, trigger="test", batch_size=1001)
    with unit_of_work(vault.ctx.engine) as session:
        assert list(session.exec(select(PurgeRun))) == []


def test_as_of_in_the_past_purges_only_what_was_due_then(vault: Vault) -> None:
    first = vault.record("cam-a", T0, 1)
    second = vault.record("cam-a", T0 + timedelta(days=5), 1)
    vault.clock.set(second[0].retention_until + timedelta(days=1))
    report = run_purge(vault.ctx, signing_key=vault.key, trigger="test",
                       as_of=first[0].retention_until)
    assert report.purged == 1
    assert report.as_of == first[0].retention_until
    assert states(vault.ctx) == {first[0].id: "purged", second[0].id: "stored"}


def test_a_second_purge_at_the_same_time_is_refused(vault: Vault) -> None:
    segments = vault.record("cam-a", T0, 1)
    vault.clock.set(segments[0].retention_until)
    with _exclusive(vault.ctx.engine), pytest.raises(Conflict, match="another purge"):
        run_purge(vault.ctx, signing_key=vault.key, trigger="test")
    assert states(vault.ctx)[segments[0].id] == SegmentState.STORED


# -- dry run -----------------------------------------------------------------------------------


def snapshot(ctx: VaultContext) -> tuple[Any, ...]:
    with unit_of_work(ctx.engine) as session:
        return (
            sorted((s.id, s.state, s.wrapped_dek) for s in session.exec(select(Segment))),
            len(list(session.exec(select(Tombstone)))),
            len(list(session.exec(select(PurgeRun)))),
            len(list(session.exec(select(AuditEvent)))),
            sorted(ctx.store.list("")),
        )


def test_dry_run_shows_what_would_go_and_changes_nothing(vault: Vault) -> None:
    a = vault.record("cam-a", T0, 3)
    b = vault.record("cam-b", T0 + 10 * MIN, 2)
    vault.record("cam-b", T0 + timedelta(days=30), 1)  # not due
    hold_id = add_hold(vault.ctx, ["cam-b"], T0, T0 + 11 * MIN)
    before = snapshot(vault.ctx)

    vault.clock.set(b[-1].retention_until + timedelta(hours=1))
    report = run_purge(vault.ctx, signing_key=vault.key, trigger="cli", dry_run=True)
    assert snapshot(vault.ctx) == before
    assert report.dry_run and report.run_id is None and report.certificate_key is None
    assert report.purged == 4 and report.held_back == 1
    tallies = {c.camera_id: c for c in report.cameras}
    assert tallies["cam-a"].segments == 3
    assert tallies["cam-a"].bytes == sum(s.bytes for s in a)
    assert (tallies["cam-a"].first_start, tallies["cam-a"].last_end) == (T0, T0 + 3 * MIN)
    assert tallies["cam-b"].segments == 1
    assert [(h.hold_id, h.segments, dict(h.cameras)) for h in report.holds] == [
        (hold_id, 1, {"cam-b": 1})
    ]

    # A dry run may look ahead of the clock; a real run may not.
    ahead = run_purge(vault.ctx, signing_key=vault.key, trigger="cli", dry_run=True,
                      as_of=REAL_NOW + timedelta(days=400))
    assert ahead.purged == 5 and ahead.held_back == 1
    assert snapshot(vault.ctx) == before


# -- crash recovery (in process: an exception that nothing catches, like a kill) ---------------


class Crash(BaseException):
    """Not an Exception: the purge's own error handling never sees it, as with SIGKILL."""


class CrashingStore:
    """Delegates to a real store; raises :class:`Crash` at a chosen call."""

    def __init__(self, inner: ObjectStore, crash: Callable[[str, Sequence[str]], bool]) -> None:
        self.inner = inner
        self.name = inner.name
        self.crash = crash
        self.armed = True

    def _maybe(self, op: str, keys: Sequence[str]) -> None:
        if self.armed and self.crash(op, keys):
            self.armed = False
            raise Crash(op)

    def put(self, key: str, data: bytes | bytearray, metadata: Mapping[str, str],
            retain_until: datetime | None = None) -> None:
        self.inner.put(key, data, metadata, retain_until)
        self._maybe("after-put", [key])

    def put_stream(self, key: str, source: ByteSource, length: int, metadata: Mapping[str, str],
                   retain_until: datetime | None = None) -> None:
        self.inner.put_stream(key, source, length, metadata, retain_until)
        self._maybe("after-put", [key])

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def head(self, key: str) -> ObjectInfo | None:
        self._maybe("head", [key])
        return self.inner.head(key)

    def present(self, keys: Sequence[str]) -> set[str]:
        self._maybe("present", keys)
        return self.inner.present(keys)

    def delete_many(self, keys: Sequence[str]) -> list[DeleteFailure]:
        self._maybe("before-delete", keys)
        failures = self.inner.delete_many(keys)
        self._maybe("after-delete", keys)
        return failures

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def set_retention(self, key: str, retain_until: datetime) -> None:
        self.inner.set_retention(key, retain_until)

    def set_legal_hold(self, key: str, on: bool) -> None:
        self.inner.set_legal_hold(key, on)

    def probe_lock_enforcement(self) -> bool:
        return self.inner.probe_lock_enforcement()


def _segment_delete(op: str, keys: Sequence[str], when: str) -> bool:
    return op == when and keys[0].startswith("segments/")


CRASH_POINTS: dict[str, Callable[[str, Sequence[str]], bool]] = {
    "after marking, before any delete": lambda op, k: _segment_delete(op, k, "before-delete"),
    "after the segment objects went": lambda op, k: _segment_delete(op, k, "after-delete"),
    "after the thumbnails went": lambda op, k: op == "after-delete" and k[0].startswith("thumbs/"),
    "while verifying": lambda op, k: op == "present",
    "after the certificate was put": lambda op, k: op == "after-put"
    and k[0].startswith(CERTIFICATE_PREFIX),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_at_each_step_is_finished_by_the_next_run(
    engine: Engine, vault_store: ObjectStore, tmp_path: Path, clock: FixedClock, point: str
) -> None:
    crashing = CrashingStore(vault_store, CRASH_POINTS[point])
    crashing.armed = False  # recording must not crash
    vault = make_vault(engine, crashing, tmp_path, clock)
    segments = vault.record("cam-a", T0, 3) + vault.record("cam-b", T0, 2, thumb=False)
    due = segments[-1].retention_until
    crashing.armed = True
    with pytest.raises(Crash):
        vault.purge(due, batch_size=2)
    # Mid-purge: every segment is stored, purging or purged; check is clean all the same.
    assert set(states(vault.ctx).values()) <= {"stored", "purging", "purged"}
    assert run_check(vault.ctx).ok, run_check(vault.ctx).violations
    with unit_of_work(vault.ctx.engine) as session:
        (crashed,) = list(session.exec(select(PurgeRun)))
    assert crashed.state == RunState.RUNNING

    report = vault.purge(due + timedelta(hours=1), batch_size=2)
    assert report.recovered_runs == (crashed.id,)
    assert set(states(vault.ctx).values()) == {"purged"}
    for segment in segments:
        assert_gone(vault.ctx, segment)
    assert_proven(vault, report)
    closed = verify_run(vault.ctx, crashed.id, [vault.key.public])
    assert closed.ok, closed.problems
    assert closed.certificate is not None
    expected = RunState.DONE if point == "after the certificate was put" else RunState.INTERRUPTED
    assert closed.certificate.state == expected
    # Every segment is in exactly one certificate.
    listed = [*closed.certificate.segment_ids, *certificate(vault, report)["segments"]]
    ids = [s if isinstance(s, str) else s["id"] for s in listed]
    assert sorted(ids) == sorted(s.id for s in segments)


def left_purging(
    engine: Engine, store: ObjectStore, tmp_path: Path, clock: FixedClock
) -> tuple[Vault, list[Segment]]:
    """Two segments a crashed run left ``purging`` (marked, nothing deleted yet)."""
    crashing = CrashingStore(store, CRASH_POINTS["after marking, before any delete"])
    crashing.armed = False
    vault = make_vault(engine, crashing, tmp_path, clock)
    segments = vault.record("cam-a", T0, 2)
    crashing.armed = True
    with pytest.raises(Crash):
        vault.purge(segments[-1].retention_until)
    assert set(states(vault.ctx).values()) == {"purging"}
    return vault, segments


def test_a_hold_placed_while_a_row_was_left_purging_wins(
    engine: Engine, vault_store: ObjectStore, tmp_path: Path, clock: FixedClock
) -> None:
    vault, segments = left_purging(engine, vault_store, tmp_path, clock)
    hold_id = add_hold(vault.ctx, ["cam-a"], T0, T0 + MIN)

    report = vault.purge(segments[-1].retention_until + timedelta(hours=1))
    assert report.held_back == 1 and report.purged == 1 and report.resumed == 1
    assert [h.hold_id for h in report.holds] == [hold_id]
    now = rows(vault.ctx)
    assert now[segments[0].id].state == SegmentState.STORED
    assert read_segment(vault.ctx, now[segments[0].id])
    assert now[segments[1].id].state == SegmentState.PURGED
    assert_proven(vault, report)


def test_a_held_row_left_purging_is_kept_even_if_its_lock_cannot_be_read(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """Resuming asks only whether a spared row's object is still there, never its lock: an
    object that lost its lock attribute after the crash is still footage under a hold."""
    store = FilesystemStore(tmp_path / "store", clock=clock.now)
    vault, segments = left_purging(engine, store, tmp_path, clock)
    hold_id = add_hold(vault.ctx, ["cam-a"], T0, T0 + MIN)
    os.removexattr(store.root / "objects" / segments[0].object_key, LOCK_ATTRIBUTE)

    report = vault.purge(segments[-1].retention_until + timedelta(hours=1))
    assert report.resumed == 1 and report.purged == 1 and report.held_back == 1
    assert [h.hold_id for h in report.holds] == [hold_id]
    now = rows(vault.ctx)
    assert now[segments[0].id].state == SegmentState.STORED
    assert read_segment(vault.ctx, now[segments[0].id])  # footage untouched
    assert_gone(vault.ctx, segments[1])
    verdict = verify_run(vault.ctx, report.run_id or "", [vault.key.public])
    assert verdict.ok, verdict.problems
    check = run_check(vault.ctx)  # names the object that lost its lock, and only it
    assert [(v.kind, v.target) for v in check.violations] == [
        ("lock-unknown", segments[0].object_key)
    ]


def test_a_failed_run_records_its_failure_and_what_it_did(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    segments = vault.record("cam-a", T0, 4, thumb=False)
    real = vault.ctx.store.delete_many
    calls = {"n": 0}

    def second_call_unavailable(keys: Sequence[str]) -> list[DeleteFailure]:
        calls["n"] += 1
        if calls["n"] == 2:
            from vault.errors import Unavailable

            raise Unavailable("store unavailable: simulated")
        return real(keys)

    monkeypatch.setattr(vault.ctx.store, "delete_many", second_call_unavailable)
    from vault.errors import Unavailable

    with pytest.raises(Unavailable):
        vault.purge(segments[-1].retention_until, batch_size=2)
    monkeypatch.undo()
    with unit_of_work(vault.ctx.engine) as session:
        (failed,) = list(session.exec(select(PurgeRun)))
    assert failed.state == RunState.FAILED and failed.purged == 2
    assert "simulated" in failed.detail
    verdict = verify_run(vault.ctx, failed.id, [vault.key.public])
    assert verdict.ok, verdict.problems
    assert sorted(states(vault.ctx).values()) == ["purged", "purged", "purging", "purging"]
    assert run_check(vault.ctx).ok

    report = vault.purge(segments[-1].retention_until + timedelta(hours=1), batch_size=2)
    assert report.resumed == 2 and report.purged == 2 and report.recovered_runs == ()
    assert set(states(vault.ctx).values()) == {"purged"}
    assert_proven(vault, report)


# -- certificates ------------------------------------------------------------------------------


def test_certificate_is_locked_signed_and_tamper_evident(vault: Vault, tmp_path: Path) -> None:
    segments = vault.record("cam-a", T0, 2)
    report = vault.purge(segments[-1].retention_until)
    key = certificate_key(report.run_id or "")
    assert report.certificate_key == key
    info = vault.ctx.store.head(key)
    assert info is not None and info.retain_until is not None
    assert info.retain_until >= report.finished_at + timedelta(days=365)
    assert vault.ctx.store.delete_many([key])  # locked: the store refuses to delete it
    if isinstance(vault.ctx.store, FilesystemStore):
        with pytest.raises(Conflict):
            vault.ctx.store.put(key, b"{}", {})  # nor replace it (S3 would add a version)

    data = vault.ctx.store.get(key)
    verified = verify_certificate(data, vault.key.public_pem())
    assert verified.segment_ids == tuple(sorted(s.id for s in segments))

    document = json.loads(data)
    document["statement"]["segments"][0]["sha256"] = "0" * 64
    with pytest.raises(IntegrityError, match="signature"):
        verify_certificate(json.dumps(document).encode(), vault.key.public_pem())
    document = json.loads(data)
    document["statement"]["segments"].pop()
    with pytest.raises(IntegrityError, match="totals"):
        verify_certificate(json.dumps(document).encode(), vault.key.public_pem())
    other = SigningKey.load_or_create(tmp_path / "other.pem")
    with pytest.raises(IntegrityError, match="names key"):
        verify_certificate(data, other.public_pem())
    with pytest.raises(IntegrityError, match="malformed"):
        verify_certificate(b"not json", vault.key.public_pem())
    with pytest.raises(IntegrityError):
        verify_certificate(data, b"not a key")

    # The run's record in the catalog and the ledger name this very object.
    with unit_of_work(vault.ctx.engine) as session:
        run = session.get(PurgeRun, report.run_id)
        assert run is not None
        assert (run.state, run.certificate_key, run.certificate_sha256) == (
            "done", key, hashlib.sha256(data).hexdigest()
        )
        (event,) = session.exec(select(AuditEvent).where(AuditEvent.action == "purge.run"))
    assert json.loads(event.details)["certificate_sha256"] == run.certificate_sha256


def test_verify_run_notices_a_tombstone_deleted_behind_our_back(vault: Vault) -> None:
    segments = vault.record("cam-a", T0, 2)
    report = vault.purge(segments[-1].retention_until)
    assert report.run_id is not None
    with unit_of_work(vault.ctx.engine) as session:
        stone = session.get(Tombstone, segments[0].id)
        session.delete(stone)
    verdict = verify_run(vault.ctx, report.run_id, [vault.key.public])
    assert not verdict.ok
    assert any("tombstones" in p for p in verdict.problems)
    with pytest.raises(NotFound):
        verify_run(vault.ctx, str(uuid.uuid4()), [vault.key.public])


# -- check understands purged rows -------------------------------------------------------------


def test_check_flags_a_purge_that_is_not_what_it_claims(vault: Vault) -> None:
    segments = vault.record("cam-a", T0, 3)
    report = vault.purge(segments[-1].retention_until)
    assert report.purged == 3 and run_check(vault.ctx).ok
    # An object comes back under a purged segment's key (restored from a backup, say) ...
    vault.ctx.store.put(segments[0].object_key, b"restored", {})
    vault.ctx.store.put(segments[1].thumb_key or "", b"restored", {})
    # ... and a purged row keeps a wrapped data key (the erase did not happen).
    with unit_of_work(vault.ctx.engine) as session:
        row = session.get(Segment, segments[2].id)
        assert row is not None
        row.wrapped_dek = b"\x00" * 40
        session.add(row)
    found = sorted((v.kind, v.target) for v in run_check(vault.ctx).violations)
    assert found == sorted([
        ("purged-object-present", segments[0].object_key),
        ("purged-object-present", segments[1].thumb_key or ""),
        ("purge-unproven", f"segment:{segments[2].id}"),
    ])


def test_resume_at_start_up_finishes_only_what_a_crash_left(
    engine: Engine, vault_store: ObjectStore, tmp_path: Path, clock: FixedClock
) -> None:
    from vault.purge import resume_purge

    crashing = CrashingStore(vault_store, CRASH_POINTS["after marking, before any delete"])
    crashing.armed = False
    vault = make_vault(engine, crashing, tmp_path, clock)
    assert resume_purge(vault.ctx, signing_key=vault.key) is None  # nothing left: no run
    first = vault.record("cam-a", T0, 2)
    later = vault.record("cam-b", T0 + timedelta(days=1), 1)
    crashing.armed = True
    with pytest.raises(Crash):
        vault.purge(first[-1].retention_until)
    vault.clock.set(later[0].retention_until + timedelta(days=1))  # now cam-b is due too

    report = resume_purge(vault.ctx, signing_key=vault.key)
    assert report is not None and report.trigger == "resume"
    assert report.purged == report.resumed == 2 and len(report.recovered_runs) == 1
    assert states(vault.ctx) == {first[0].id: "purged", first[1].id: "purged",
                                 later[0].id: "stored"}  # due, but that is the nightly's job
    assert_proven(vault, report)
    assert resume_purge(vault.ctx, signing_key=vault.key) is None
