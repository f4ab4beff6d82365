"""Retention policy changes against real peers: SQLite and PostgreSQL, filesystem and S3 (moto).

cam-a is on policy ``pci`` (90 days, bounds 90..365); cam-b on ``lobby`` (30 days, 7..60).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.integration.test_holds import commit
from tests.integration.test_lifecycle import T0
from tests.support.configs import SITE_AND_POLICY
from vault.catalog import sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.errors import InvalidInput, NotFound, VaultError
from vault.lifecycle import VaultContext
from vault.models import AuditEvent, RetentionPolicy, Segment, SegmentState
from vault.policies import PolicyChange, change_policy, sync_retention_locks
from vault.store.base import ObjectStore
from vault.timerange import FixedClock

CONFIG = SITE_AND_POLICY + """
[[retention_policies]]
id = "lobby"
days = 30
min_days = 7
max_days = 60

[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }

[[cameras]]
id = "cam-b"
site = "tokyo-1"
name = "Lobby"
retention_policy = "lobby"
source = { kind = "rtsp", url = "rtsp://10.0.0.6/stream1" }
"""

M = timedelta(minutes=1)
DAY = timedelta(days=1)
NOW = T0 + timedelta(hours=1)
REASON = "PCI DSS scope review, ticket PRIV-12"


@pytest.fixture
def ctx(engine: Engine, store: ObjectStore, keys: LocalKeyProvider) -> VaultContext:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    return VaultContext(engine=engine, store=store, keys=keys, clock=FixedClock(NOW))


@pytest.fixture
def footage(ctx: VaultContext, tmp_path: Path) -> list[Segment]:
    spool = tmp_path / "spool"
    spool.mkdir()
    return [commit(ctx, spool, T0 + i * M) for i in range(3)] + [
        commit(ctx, spool, T0, "cam-b")
    ]


def state(ctx: VaultContext) -> dict[str, Any]:
    """Everything a policy change may touch: days, deadlines, the store's locks, events."""
    with unit_of_work(ctx.engine) as session:
        days = {p.id: p.days for p in session.exec(select(RetentionPolicy))}
        rows = list(
            session.exec(select(Segment).order_by(col(Segment.camera_id), col(Segment.start)))
        )
        changes = len(list(session.exec(
            select(AuditEvent).where(AuditEvent.action == "retention.change")
        )))
    locks: dict[str, datetime | None] = {}
    for row in rows:
        for key in (row.object_key, row.thumb_key):
            assert key is not None
            info = ctx.store.head(key)
            locks[key] = info.retain_until if info is not None else None
    return {
        "days": days,
        "deadlines": {r.id: r.retention_until for r in rows},
        "locks": locks,
        "events": changes,
    }


def lock_of(ctx: VaultContext, key: str | None) -> datetime | None:
    assert key is not None
    info = ctx.store.head(key)
    assert info is not None
    return info.retain_until


def test_lengthened_policy_recomputes_deadlines_and_extends_locks(
    ctx: VaultContext, footage: list[Segment]
) -> None:
    result = change_policy(ctx, "pci", 180, REASON, "privacy-1", NOW)
    assert result.segments == 3
    assert result.locks is not None
    assert (result.locks.extended, result.locks.kept, result.locks.failed) == (6, 0, [])
    with unit_of_work(ctx.engine) as session:
        rows = {s.id: s for s in session.exec(select(Segment))}
        policy = session.get(RetentionPolicy, "pci")
        (event,) = session.exec(
            select(AuditEvent).where(AuditEvent.action == "retention.change")
        )
    assert policy is not None and policy.days == 180
    for segment in footage[:3]:
        assert rows[segment.id].retention_until == segment.end + 180 * DAY
        assert lock_of(ctx, segment.object_key) == segment.end + 180 * DAY
        assert lock_of(ctx, segment.thumb_key) == segment.end + 180 * DAY
    lobby = footage[3]  # another policy: untouched
    assert rows[lobby.id].retention_until == lobby.end + 30 * DAY
    assert lock_of(ctx, lobby.object_key) == lobby.end + 30 * DAY

    details = json.loads(event.details)
    assert (event.actor, event.target, event.decision) == (
        "privacy-1", "retention-policy:pci", "done"
    )
    assert (details["old_days"], details["new_days"], details["segments"]) == (90, 180, 3)
    assert details["reason_given"] == REASON and event.reason == REASON

    again = sync_retention_locks(ctx, ("cam-a",))  # idempotent (P4)
    assert (again.extended, again.unchanged) == (0, 6)


def test_shortened_policy_moves_the_catalog_the_store_keeps_its_lock(
    ctx: VaultContext, footage: list[Segment]
) -> None:
    change_policy(ctx, "lobby", 60, REASON, "privacy-1", NOW)
    result = change_policy(ctx, "lobby", 7, "minimise: lobby footage not in PCI scope",
                           "privacy-1", NOW)
    lobby = footage[3]
    with unit_of_work(ctx.engine) as session:
        row = session.get(Segment, lobby.id)
    assert row is not None and row.retention_until == lobby.end + 7 * DAY
    assert result.locks is not None and result.locks.kept == 2
    assert lock_of(ctx, lobby.object_key) == lobby.end + 60 * DAY
    assert lock_of(ctx, lobby.thumb_key) == lobby.end + 60 * DAY


def test_only_stored_footage_is_recomputed(ctx: VaultContext, footage: list[Segment]) -> None:
    gone = footage[0]
    with unit_of_work(ctx.engine) as session:
        row = session.get(Segment, gone.id)
        assert row is not None
        row.state = SegmentState.PURGED
        session.add(row)
    assert change_policy(ctx, "pci", 100, REASON, "privacy-1", NOW).segments == 2
    with unit_of_work(ctx.engine) as session:
        row = session.get(Segment, gone.id)
    assert row is not None and row.retention_until == gone.end + 90 * DAY


@pytest.mark.parametrize(
    ("policy", "days", "reason", "error"),
    [
        ("pci", -1, REASON, InvalidInput),
        ("pci", 0, REASON, InvalidInput),
        ("pci", 89, REASON, InvalidInput),  # below the PCI minimum
        ("pci", 366, REASON, InvalidInput),
        ("lobby", 61, REASON, InvalidInput),
        ("pci", 120, "   short  ", InvalidInput),
        ("pci", True, REASON, InvalidInput),
        ("nope", 120, REASON, NotFound),
    ],
)
def test_bad_changes_change_nothing(
    ctx: VaultContext, footage: list[Segment], policy: str, days: Any, reason: str,
    error: type[VaultError],
) -> None:
    before = state(ctx)
    with pytest.raises(error):
        change_policy(ctx, policy, days, reason, "privacy-1", NOW)
    assert state(ctx) == before


def test_a_failing_record_changes_nothing(ctx: VaultContext, footage: list[Segment]) -> None:
    """The API's ledger write comes first: if it fails, nothing is written."""
    before = state(ctx)

    def ledger_down(_change: PolicyChange) -> None:
        raise VaultError("ledger unavailable: simulated")

    with pytest.raises(VaultError):
        change_policy(ctx, "pci", 200, REASON, "privacy-1", NOW, record=ledger_down)
    assert state(ctx) == before
