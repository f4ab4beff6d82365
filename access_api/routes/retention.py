"""Holds, retention policies, the retention report and purge runs (DESIGN §9).

Each change follows the access gate's order: resolve within the caller's scope (404 outside
it), decide, make the decision durable in the ledger, then write the catalog. The store's legal
holds and retention locks follow after the response (a background task, whose outcome is a
ledger event of its own): a hold may cover years of footage, and the catalog — which the purge
reads — is already right. ``reconcile_legal_holds`` / ``sync_retention_locks`` repair a task a
crash cut short. Every refusal, bad input included, is logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query
from pydantic import AwareDatetime, BaseModel, Field
from sqlmodel import col, select

from access_api.deps import ApiServices, Caller, ObjectId, ServicesDep, requires
from access_api.grants import visible_camera
from access_api.policy import (
    ALL_SITES,
    Action,
    HoldPlaceFacts,
    HoldReleaseFacts,
    PrincipalView,
    Role,
    decide,
)
from vault.errors import Forbidden, InvalidInput, NotFound, VaultError
from vault.holds import (
    StoreSync,
    apply_change,
    camera_sites,
    hold_objects,
    is_active,
    list_holds,
    plan_placement,
    plan_release,
    release_objects,
    scope_of,
)
from vault.models import Hold, PurgeRun
from vault.policies import PolicyChange, change_policy, list_policies, sync_retention_locks
from vault.report import retention_report

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["retention"])

HoldLister = Annotated[Caller, Depends(requires(Action.HOLDS_LIST))]
HoldPlacer = Annotated[Caller, Depends(requires(Action.HOLDS_PLACE))]
HoldReleaser = Annotated[Caller, Depends(requires(Action.HOLDS_RELEASE))]
RetentionReader = Annotated[Caller, Depends(requires(Action.RETENTION_READ))]
RetentionChanger = Annotated[Caller, Depends(requires(Action.RETENTION_CHANGE))]
PolicyId = Annotated[
    str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Retention policy id")
]
CameraIdField = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


# -- schemas ----------------------------------------------------------------------------------


class HoldIn(BaseModel):
    model_config = {"extra": "forbid"}

    kind: Literal["legal", "security"] = Field(
        description="legal (legal counsel) or security (a supervisor of the sites; expires)"
    )
    cameras: list[CameraIdField] = Field(min_length=1, max_length=64)
    start: AwareDatetime = Field(description="Start of the held range (inclusive), with offset")
    end: AwareDatetime = Field(
        description="End of the held range (exclusive), with offset; may be in the future"
    )
    reason: str = Field(min_length=1, max_length=2000, description="Why, in words")
    warrant_ref: str = Field("", max_length=200, description="Warrant or case reference")
    expires_at: AwareDatetime | None = Field(
        None, description="When the hold lapses; required for security holds"
    )


class ReleaseIn(BaseModel):
    model_config = {"extra": "forbid"}

    reason: str = Field(min_length=1, max_length=2000)


class HoldOut(BaseModel):
    id: str
    kind: str
    cameras: list[str]
    start: datetime
    end: datetime
    reason: str
    warrant_ref: str
    placed_by: str
    placed_at: datetime
    expires_at: datetime | None
    released_by: str | None
    released_at: datetime | None
    release_reason: str
    active: bool


class PolicyOut(BaseModel):
    id: str
    days: int
    min_days: int
    max_days: int
    basis: str
    effective_from: datetime | None
    cameras: list[str]


class PolicyChangeIn(BaseModel):
    model_config = {"extra": "forbid"}

    days: int = Field(description="Days kept after a segment's end, within the policy's bounds")
    reason: str = Field(min_length=1, max_length=2000, description="Why, in words")


class PolicyChangeOut(BaseModel):
    policy: PolicyOut
    old_days: int
    new_days: int
    segments: int = Field(description="Stored segments whose retention_until was recomputed")


class HeldByOut(BaseModel):
    hold: str
    kind: str
    reason: str
    warrant_ref: str
    placed_by: str
    placed_at: datetime
    expires_at: datetime | None
    start: datetime
    end: datetime
    segments: int
    bytes: int


class CameraRetentionOut(BaseModel):
    camera: str
    site: str
    enabled: bool
    policy: str
    days: int
    oldest_start: datetime | None
    newest_end: datetime | None
    stored_segments: int
    stored_bytes: int
    overdue_segments: int
    overdue_bytes: int
    oldest_overdue_deadline: datetime | None
    held_segments: int
    held_bytes: int
    held_past_deadline: int
    purging_segments: int
    holds: list[HeldByOut]


class ReportTotalsOut(BaseModel):
    cameras: int
    stored_segments: int
    stored_bytes: int
    overdue_segments: int
    overdue_bytes: int
    held_segments: int
    held_bytes: int
    held_past_deadline: int
    purging_segments: int


class LastPurgeOut(BaseModel):
    id: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    as_of: datetime
    purged: int
    held_back: int
    failed: int


class ReportOut(BaseModel):
    as_of: datetime
    ok: bool = Field(description="No footage past its deadline without a hold")
    totals: ReportTotalsOut
    last_purge: LastPurgeOut | None
    cameras: list[CameraRetentionOut]


class PurgeRunOut(BaseModel):
    id: str
    state: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    as_of: datetime
    purged: int
    purged_bytes: int
    held_back: int
    failed: int
    certificate_key: str | None
    certificate_sha256: str | None
    detail: str


# -- helpers ----------------------------------------------------------------------------------


def _oversees(p: PrincipalView) -> bool:
    """The privacy officer and auditors see every hold and every camera's retention."""
    return p.has(Role.PRIVACY_OFFICER) or p.has(Role.AUDITOR)


def _sees(p: PrincipalView, sites: frozenset[str]) -> bool:
    return _oversees(p) or (bool(sites) and p.covers_sites(sites))


def _site_scope(p: PrincipalView) -> list[str] | None:
    return None if _oversees(p) or ALL_SITES in p.sites else sorted(p.sites)


def _hold_out(hold: Hold, now: datetime) -> HoldOut:
    return HoldOut(
        id=hold.id,
        kind=hold.kind,
        cameras=json.loads(hold.cameras),
        start=hold.start,
        end=hold.end,
        reason=hold.reason,
        warrant_ref=hold.warrant_ref,
        placed_by=hold.placed_by,
        placed_at=hold.placed_at,
        expires_at=hold.expires_at,
        released_by=hold.released_by,
        released_at=hold.released_at,
        release_reason=hold.release_reason,
        active=is_active(hold, now),
    )


def _refused(
    services: ApiServices, caller: Caller, action: str, target: str, exc: VaultError,
    details: dict[str, Any],
) -> None:
    services.auditor.record(
        caller.principal, action, target, "refused", reason=f"{exc.kind}: {exc.message}",
        client=caller.client, details=details,
    )


def _store_task(
    services: ApiServices, action: str, target: str, on_behalf_of: str,
    work: Callable[[], StoreSync | Any],
) -> None:
    """Run a store sync after the response and record its outcome (I10)."""
    try:
        outcome = work()
        counts = outcome.to_dict()
        done = counts.get("complete", True) and not counts.get("failed", 0)
        services.auditor.record(
            "system:store-sync", action, target, "done" if done else "partial",
            reason="store follows the catalog" if done else "some objects await reconcile",
            details={"on_behalf_of": on_behalf_of, **counts},
        )
    except VaultError as exc:  # the catalog is right; reconcile repairs the store later
        log.warning("store sync failed action=%s target=%s error=%s", action, target, exc.message)


# -- holds ------------------------------------------------------------------------------------


@router.post("/holds", response_model=HoldOut, status_code=201)
def place(
    body: HoldIn, caller: HoldPlacer, services: ServicesDep, background: BackgroundTasks
) -> HoldOut:
    """Place a hold on cameras x range; its footage is kept whatever its retention says."""
    p = caller.principal
    now = services.ctx.clock.now()
    wanted = sorted(set(body.cameras))
    target = "cameras:" + ",".join(wanted)
    asked = {
        "kind": body.kind, "cameras": wanted, "start": body.start.isoformat(),
        "end": body.end.isoformat(), "reason_given": body.reason,
        "warrant_ref": body.warrant_ref,
        "expires_at": body.expires_at.isoformat() if body.expires_at else None,
    }
    with services.uow() as session:
        try:
            sites = frozenset(visible_camera(session, p, c).site_id for c in wanted)
        except NotFound as exc:
            _refused(services, caller, "holds.place", target, exc, asked)
            raise
        decision = decide(
            p, Action.HOLDS_PLACE,
            HoldPlaceFacts(kind=body.kind, sites=sites, has_expiry=body.expires_at is not None),
            now,
        )
        if not decision.allowed:
            services.auditor.decision(
                p, "holds.place", target, decision, client=caller.client, details=asked
            )
            raise Forbidden(decision.reason, decision.rule)
        try:
            change = plan_placement(
                session, kind=body.kind, cameras=wanted, start=body.start, end=body.end,
                reason=body.reason, placed_by=p.name, now=now, warrant_ref=body.warrant_ref,
                expires_at=body.expires_at,
            )
        except VaultError as exc:
            _refused(services, caller, "holds.place", target, exc, asked)
            raise
        # Durable before the hold exists (I10).
        services.auditor.decision(
            p, "holds.place", change.target, decision, client=caller.client,
            details=change.details,
        )
        hold = apply_change(session, change)
    scope = scope_of(hold)
    background.add_task(
        _store_task, services, "holds.objects", change.target, p.name,
        lambda: hold_objects(services.ctx, scope),
    )
    return _hold_out(hold, now)


@router.get("/holds", response_model=list[HoldOut])
def holds(
    caller: HoldLister,
    services: ServicesDep,
    state: Annotated[Literal["active", "inactive", "all"], Query()] = "all",
) -> list[HoldOut]:
    """Holds, newest first: all of them for the privacy officer and auditors, those on your
    sites for supervisors and legal counsel."""
    p = caller.principal
    now = services.ctx.clock.now()
    with services.uow() as session:
        rows = [h for h in list_holds(session, now, state=state)
                if _sees(p, camera_sites(session, h))]
    services.auditor.record(
        p, "holds.list", "holds", "allowed", reason="role: holds of own scope",
        client=caller.client, details={"state": state, "count": len(rows)},
    )
    return [_hold_out(h, now) for h in rows]


@router.post("/holds/{hold_id}/release", response_model=HoldOut)
def release(
    hold_id: ObjectId,
    body: ReleaseIn,
    caller: HoldReleaser,
    services: ServicesDep,
    background: BackgroundTasks,
) -> HoldOut:
    """Release a hold: a legal hold by legal counsel other than who placed it (or the privacy
    officer), a security hold by a supervisor of its sites (or the privacy officer)."""
    p = caller.principal
    now = services.ctx.clock.now()
    target = f"hold:{hold_id}"
    with services.uow() as session:
        hold = session.get(Hold, str(hold_id))
        sites = camera_sites(session, hold) if hold is not None else frozenset()
        if hold is None or not _sees(p, sites):
            missing = NotFound(f"no hold {str(hold_id)!r}")
            _refused(services, caller, "holds.release", target, missing, {})
            raise missing
        decision = decide(
            p, Action.HOLDS_RELEASE,
            HoldReleaseFacts(kind=hold.kind, placed_by=hold.placed_by, sites=sites), now,
        )
        if not decision.allowed:
            services.auditor.decision(
                p, "holds.release", target, decision, client=caller.client,
                details={"kind": hold.kind, "placed_by": hold.placed_by,
                         "reason_given": body.reason},
            )
            raise Forbidden(decision.reason, decision.rule)
        try:
            change = plan_release(session, hold, released_by=p.name, reason=body.reason, now=now)
        except VaultError as exc:
            _refused(services, caller, "holds.release", target, exc,
                     {"reason_given": body.reason})
            raise
        services.auditor.decision(
            p, "holds.release", target, decision, client=caller.client, details=change.details
        )
        released = apply_change(session, change)
    scope = scope_of(released)
    background.add_task(
        _store_task, services, "holds.objects", target, p.name,
        lambda: release_objects(services.ctx, [scope]),
    )
    return _hold_out(released, now)


# -- retention policies, report, purge runs ---------------------------------------------------


def _policy_out(policy: Any, cameras: list[Any], p: PrincipalView) -> PolicyOut:
    scope = _site_scope(p)
    return PolicyOut(
        id=policy.id,
        days=policy.days,
        min_days=policy.min_days,
        max_days=policy.max_days,
        basis=policy.basis,
        effective_from=policy.effective_from,
        cameras=[c.id for c in cameras if scope is None or c.site_id in scope],
    )


@router.get("/retention-policies", response_model=list[PolicyOut])
def policies(caller: RetentionReader, services: ServicesDep) -> list[PolicyOut]:
    """Retention policies: days kept after a segment's end, their bounds and their cameras."""
    with services.uow() as session:
        rows = list_policies(session)
    services.auditor.record(
        caller.principal, "retention.policies", "retention-policies", "allowed",
        reason="role: retention read", client=caller.client, details={"count": len(rows)},
    )
    return [_policy_out(policy, cameras, caller.principal) for policy, cameras in rows]


@router.put("/retention-policies/{policy_id}", response_model=PolicyChangeOut)
def change(
    policy_id: PolicyId,
    body: PolicyChangeIn,
    caller: RetentionChanger,
    services: ServicesDep,
    background: BackgroundTasks,
) -> PolicyChangeOut:
    """Change a policy's days (privacy officer): stored footage's deadlines are recomputed at
    once; the store's locks are extended where they grew, after the response."""
    p = caller.principal
    target = f"retention-policy:{policy_id}"

    def record(planned: PolicyChange) -> None:
        services.auditor.record(
            p, "retention.change", planned.target, "allowed",
            reason="role: the privacy officer sets retention", client=caller.client,
            details=planned.details,
        )

    try:
        result = change_policy(
            services.ctx, policy_id, body.days, body.reason, p.name, services.ctx.clock.now(),
            role=p.primary_role, client=caller.client, record=record, sync_store=False,
        )
    except (InvalidInput, NotFound) as exc:
        _refused(services, caller, "retention.change", target, exc,
                 {"days": body.days, "reason_given": body.reason})
        raise
    cameras = result.change.cameras
    background.add_task(
        _store_task, services, "retention.locks", target, p.name,
        lambda: sync_retention_locks(services.ctx, cameras),
    )
    with services.uow() as session:
        policy = next(pc for pc in list_policies(session) if pc[0].id == policy_id)
    return PolicyChangeOut(
        policy=_policy_out(policy[0], policy[1], p),
        old_days=result.change.old_days,
        new_days=result.change.new_days,
        segments=result.segments,
    )


@router.get("/retention/report", response_model=ReportOut)
def report(caller: RetentionReader, services: ServicesDep) -> Any:
    """Per camera: oldest and newest footage, footage past its deadline and not held (0 the
    morning after a purge), held footage and the holds that keep it."""
    p = caller.principal
    with services.uow() as session:
        result = retention_report(session, services.ctx.clock.now(), sites=_site_scope(p))
    services.auditor.record(
        p, "retention.report", "retention", "allowed", reason="role: retention read",
        client=caller.client,
        details={"cameras": len(result.cameras), "overdue_segments": result.overdue_segments},
    )
    return result.to_dict()


@router.get("/purge-runs", response_model=list[PurgeRunOut])
def purge_runs(
    caller: RetentionReader,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PurgeRunOut]:
    """Purge runs, newest first, with their deletion certificate's key and SHA-256."""
    with services.uow() as session:
        rows = list(
            session.exec(
                select(PurgeRun).order_by(col(PurgeRun.started_at).desc(), col(PurgeRun.id))
                .limit(limit)
            )
        )
    services.auditor.record(
        caller.principal, "purge.runs", "purge-runs", "allowed", reason="role: retention read",
        client=caller.client, details={"count": len(rows)},
    )
    return [
        PurgeRunOut(
            id=r.id, state=r.state, trigger=r.trigger, started_at=r.started_at,
            finished_at=r.finished_at, as_of=r.as_of, purged=r.purged,
            purged_bytes=r.purged_bytes, held_back=r.held_back, failed=r.failed,
            certificate_key=r.certificate_key, certificate_sha256=r.certificate_sha256,
            detail=r.detail,
        )
        for r in rows
    ]
