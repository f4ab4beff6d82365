"""Holds against real peers: SQLite and PostgreSQL, the filesystem store and S3 (moto).

Footage is committed through the real commit protocol; a hold's effect on the store is read
back with the store's own ``head`` (the S3 backend reads the object-lock headers).

    cam-a:  seg0 [T0, +1m)  seg1 [+1m, +2m)  seg2 [+2m, +3m)
    cam-b:  seg0 [T0, +1m)
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.integration.test_lifecycle import T0, closed_segment
from tests.support.configs import SITE_AND_POLICY
from vault.catalog import sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.errors import Conflict, InvalidInput, NotFound, Unavailable
from vault.holds import (
    EXPIRY_ACTOR,
    active_holds,
    apply_change,
    get_hold,
    hold_objects,
    place_hold,
    plan_placement,
    plan_release,
    reconcile_legal_holds,
    release_hold,
    release_objects,
    run_hold_expiry,
    scope_of,
)
from vault.lifecycle import VaultContext, commit_segment
from vault.models import AuditEvent, Hold, Segment
from vault.pending import PendingSegment
from vault.store.base import ObjectStore
from vault.timerange import FixedClock

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
name = "Side door"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.6/stream1" }
"""

M = timedelta(minutes=1)
NOW = T0 + timedelta(hours=1)
REASON = "litigation: tailgating incident at gate 2"


@pytest.fixture
def ctx(engine: Engine, store: ObjectStore, keys: LocalKeyProvider) -> VaultContext:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    return VaultContext(engine=engine, store=store, keys=keys, clock=FixedClock(NOW))


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def commit(ctx: VaultContext, spool: Path, start: datetime, camera: str = "cam-a") -> Segment:
    pending = closed_segment(spool, start)
    if camera != "cam-a":
        pending = pending.with_(camera_id=camera)
        pending.save(spool)
    return commit_segment(ctx, pending, spool)


@pytest.fixture
def footage(ctx: VaultContext, spool: Path) -> dict[str, list[Segment]]:
    return {
        "cam-a": [commit(ctx, spool, T0 + i * M) for i in range(3)],
        "cam-b": [commit(ctx, spool, T0, "cam-b")],
    }


def held(store: ObjectStore, segment: Segment) -> tuple[bool, bool]:
    """(segment object held, thumbnail held), read back from the store."""
    info = store.head(segment.object_key)
    assert segment.thumb_key is not None
    thumb = store.head(segment.thumb_key)
    assert info is not None and thumb is not None
    return info.legal_hold, thumb.legal_hold


def place(ctx: VaultContext, start: datetime, end: datetime, cameras: tuple[str, ...] = ("cam-a",),
          **kwargs: Any) -> Hold:
    kwargs.setdefault("kind", "legal")
    kwargs.setdefault("placed_by", "legal-1")
    kwargs.setdefault("role", "legal")
    hold, sync = place_hold(
        ctx, cameras=cameras, start=start, end=end, reason=REASON, **kwargs
    )
    assert sync.complete and not sync.failed
    return hold


def events(ctx: VaultContext, action: str) -> list[AuditEvent]:
    with unit_of_work(ctx.engine) as session:
        return list(
            session.exec(
                select(AuditEvent).where(AuditEvent.action == action)
                .order_by(col(AuditEvent.seq))
            )
        )


def test_hold_sets_legal_hold_on_exactly_the_covered_objects(
    ctx: VaultContext, footage: dict[str, list[Segment]]
) -> None:
    seg0, seg1, seg2 = footage["cam-a"]
    # Half-open: [+1m, +2m) touches seg0's end and seg2's start, and covers seg1 only.
    hold, sync = place_hold(
        ctx, kind="legal", cameras=["cam-a"], start=T0 + M, end=T0 + 2 * M, reason=REASON,
        placed_by="legal-1", role="legal", warrant_ref="W-2026-17",
    )
    assert (sync.held, sync.missing, sync.failed) == (2, 0, [])
    assert held(ctx.store, seg1) == (True, True)
    assert held(ctx.store, seg0) == (False, False)
    assert held(ctx.store, seg2) == (False, False)
    assert held(ctx.store, footage["cam-b"][0]) == (False, False)

    (event,) = events(ctx, "holds.place")
    details = json.loads(event.details)
    assert (event.actor, event.target, event.decision) == ("legal-1", f"hold:{hold.id}", "done")
    assert details["cameras"] == ["cam-a"]
    assert details["start"] == (T0 + M).isoformat() and details["end"] == (T0 + 2 * M).isoformat()
    assert details["reason_given"] == REASON and details["warrant_ref"] == "W-2026-17"

    again = hold_objects(ctx, scope_of(hold))  # re-runnable: nothing left to do
    assert (again.held, again.unchanged) == (0, 2)


def test_overlapping_holds_release_one_the_other_still_holds(
    ctx: VaultContext, footage: dict[str, list[Segment]]
) -> None:
    seg0, seg1, seg2 = footage["cam-a"]
    first = place(ctx, T0, T0 + 2 * M)  # seg0, seg1
    second = place(ctx, T0 + M, T0 + 3 * M, kind="security", placed_by="sup-1",
                   role="supervisor", expires_at=NOW + timedelta(days=7))  # seg1, seg2
    assert [held(ctx.store, s) for s in (seg0, seg1, seg2)] == [(True, True)] * 3

    hold, sync = release_hold(
        ctx, first.id, released_by="legal-2", role="legal", reason="case settled out of court"
    )
    assert hold.released_by == "legal-2" and hold.released_at == NOW
    assert (sync.released, sync.kept) == (2, 2)  # seg0 let go; seg1 kept by the second hold
    assert held(ctx.store, seg0) == (False, False)
    assert held(ctx.store, seg1) == (True, True)
    assert held(ctx.store, seg2) == (True, True)

    with pytest.raises(Conflict):
        release_hold(ctx, first.id, released_by="legal-3", role="legal", reason="twice over now")
    release_hold(ctx, second.id, released_by="sup-2", role="supervisor", reason="incident closed")
    assert [held(ctx.store, s) for s in (seg0, seg1, seg2)] == [(False, False)] * 3
    with unit_of_work(ctx.engine) as session:
        assert active_holds(session, NOW) == []
    released = [json.loads(e.details) for e in events(ctx, "holds.release")]
    assert [(d["hold"], d["released_by"]) for d in released] == [
        (first.id, "legal-2"), (second.id, "sup-2")
    ]


def test_footage_committed_inside_an_active_hold_is_held(
    ctx: VaultContext, spool: Path
) -> None:
    place(ctx, T0, T0 + timedelta(days=30))  # reaches into the future: footage yet to come
    place(ctx, T0, T0 + timedelta(days=30), cameras=("cam-b",), kind="security",
          placed_by="sup-1", role="supervisor", expires_at=NOW + M)
    inside = commit(ctx, spool, T0 + 10 * M)
    assert held(ctx.store, inside) == (True, True)

    outside = commit(ctx, spool, T0 - 10 * M)  # before the range
    assert held(ctx.store, outside) == (False, False)

    assert isinstance(ctx.clock, FixedClock)
    ctx.clock.advance(2 * M)  # the security hold on cam-b has expired: it holds nothing new
    expired = commit(ctx, spool, T0 + 10 * M, camera="cam-b")
    assert held(ctx.store, expired) == (False, False)


def test_commit_retried_after_the_row_still_applies_the_hold(
    ctx: VaultContext, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place(ctx, T0, T0 + timedelta(days=1))
    pending = closed_segment(spool, T0 + 5 * M)
    import vault.lifecycle as lifecycle

    def store_down(_ctx: VaultContext, _segment: Segment) -> bool:
        raise Unavailable("store unavailable: simulated after the insert")

    monkeypatch.setattr(lifecycle, "hold_new_segment", store_down)
    with pytest.raises(Unavailable):
        commit_segment(ctx, pending, spool)
    monkeypatch.undo()
    again = PendingSegment.from_json(pending.manifest_path(spool).read_bytes())
    segment = commit_segment(ctx, again, spool)  # finds the row: applies the hold, cleans up
    assert held(ctx.store, segment) == (True, True)
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"end": T0 - M}, InvalidInput),  # end before start
        ({"end": T0}, InvalidInput),  # empty range
        ({"start": T0.replace(tzinfo=None)}, InvalidInput),  # naive
        ({"end": (T0 + M).replace(tzinfo=None)}, InvalidInput),
        ({"cameras": ["cam-x"]}, NotFound),
        ({"cameras": []}, InvalidInput),
        ({"kind": "personal"}, InvalidInput),
        ({"reason": "because"}, InvalidInput),
        ({"kind": "security"}, InvalidInput),  # a security hold needs an expiry
        ({"kind": "security", "expires_at": NOW}, InvalidInput),  # ... in the future
        ({"expires_at": (NOW + M).replace(tzinfo=None)}, InvalidInput),
    ],
)
def test_bad_holds_are_refused_and_change_nothing(
    ctx: VaultContext, footage: dict[str, list[Segment]], change: dict[str, Any],
    error: type[Exception],
) -> None:
    args: dict[str, Any] = {
        "kind": "legal", "cameras": ["cam-a"], "start": T0, "end": T0 + M, "reason": REASON,
        "placed_by": "legal-1", "role": "legal", **change,
    }
    with pytest.raises(error):
        place_hold(ctx, **args)
    with unit_of_work(ctx.engine) as session:
        assert list(session.exec(select(Hold))) == []
    assert events(ctx, "holds.place") == []
    assert held(ctx.store, footage["cam-a"][0]) == (False, False)


def test_security_holds_expire_and_let_go_of_their_objects(
    ctx: VaultContext, footage: dict[str, list[Segment]]
) -> None:
    seg0 = footage["cam-a"][0]
    hold = place(ctx, T0, T0 + M, kind="security", placed_by="sup-1", role="supervisor",
                 expires_at=NOW + timedelta(hours=1))
    legal = place(ctx, T0, T0 + M, cameras=("cam-b",))  # legal holds never expire
    assert held(ctx.store, seg0) == (True, True)

    assert run_hold_expiry(ctx)[0] == []  # not due yet
    assert isinstance(ctx.clock, FixedClock)
    ctx.clock.advance(timedelta(hours=2))
    expired, sync = run_hold_expiry(ctx)
    assert [h.id for h in expired] == [hold.id]
    assert expired[0].released_by == EXPIRY_ACTOR
    assert expired[0].released_at == NOW + timedelta(hours=1)
    assert sync.released == 2
    assert held(ctx.store, seg0) == (False, False)
    assert held(ctx.store, footage["cam-b"][0]) == (True, True)
    (event,) = events(ctx, "holds.expire")
    assert (event.actor, event.role, event.target) == (EXPIRY_ACTOR, "system", f"hold:{hold.id}")
    assert run_hold_expiry(ctx)[0] == []  # once only
    with unit_of_work(ctx.engine) as session:
        assert get_hold(session, legal.id).released_at is None


def test_reconcile_brings_the_store_level_after_a_crash(
    ctx: VaultContext, footage: dict[str, list[Segment]]
) -> None:
    seg0, seg1, _ = footage["cam-a"]
    # A crash after the hold's row committed, before any object was held.
    with unit_of_work(ctx.engine) as session:
        change = plan_placement(
            session, kind="legal", cameras=["cam-a"], start=T0, end=T0 + M, reason=REASON,
            placed_by="legal-1", now=NOW,
        )
        hold = apply_change(session, change)
    assert held(ctx.store, seg0) == (False, False)
    sync = reconcile_legal_holds(ctx)
    assert sync.held == 2
    assert held(ctx.store, seg0) == (True, True)

    # A crash after the release committed, before the objects were let go.
    with unit_of_work(ctx.engine) as session:
        apply_change(
            session,
            plan_release(session, get_hold(session, hold.id), released_by="legal-2",
                         reason="case closed by the court", now=NOW),
        )
    assert held(ctx.store, seg0) == (True, True)
    assert reconcile_legal_holds(ctx).released == 2
    assert held(ctx.store, seg0) == (False, False)
    assert held(ctx.store, seg1) == (False, False)


class HoldPlacedMidRelease:
    """The store, with a new hold committed just after the first object is let go."""

    def __init__(self, inner: ObjectStore, place: Any) -> None:
        self._inner = inner
        self._place = place

    def set_legal_hold(self, key: str, on: bool) -> None:
        self._inner.set_legal_hold(key, on)
        if not on and self._place is not None:
            place, self._place = self._place, None
            place()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_hold_placed_while_another_is_released_keeps_its_objects_held(
    ctx: VaultContext, footage: dict[str, list[Segment]]
) -> None:
    seg0 = footage["cam-a"][0]
    first = place(ctx, T0, T0 + M)
    with unit_of_work(ctx.engine) as session:
        hold = apply_change(
            session,
            plan_release(session, get_hold(session, first.id), released_by="legal-2",
                         reason="case closed by the court", now=NOW),
        )

    def place_second() -> None:  # committed, its own sync not yet run
        with unit_of_work(ctx.engine) as session:
            apply_change(session, plan_placement(
                session, kind="legal", cameras=["cam-a"], start=T0, end=T0 + M,
                reason=REASON, placed_by="legal-3", now=NOW,
            ))

    racing = VaultContext(
        engine=ctx.engine, store=HoldPlacedMidRelease(ctx.store, place_second),  # type: ignore[arg-type]
        keys=ctx.keys, clock=ctx.clock,
    )
    release_objects(racing, [scope_of(hold)])
    assert held(ctx.store, seg0) == (True, True)
