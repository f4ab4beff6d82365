"""Cameras in scope, access requests, approvals, grants and revocation."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, Field
from sqlmodel import col, select

from access_api.deps import Caller, ObjectId, ServicesDep, requires
from access_api.grants import (
    commit_approval,
    list_grants,
    list_requests,
    plan_approval,
    plan_request,
    plan_revoke,
)
from access_api.policy import ALL_SITES, Action, Outcome
from vault.errors import Forbidden
from vault.models import AccessRequest, Camera, CameraStatus, Grant
from vault.timerange import TimeRange

router = APIRouter(tags=["access"])

CameraLister = Annotated[Caller, Depends(requires(Action.CAMERAS_LIST))]
Requester = Annotated[Caller, Depends(requires(Action.ACCESS_REQUEST))]
Lister = Annotated[Caller, Depends(requires(Action.ACCESS_LIST))]
Approver = Annotated[Caller, Depends(requires(Action.ACCESS_APPROVE))]
Revoker = Annotated[Caller, Depends(requires(Action.GRANT_REVOKE))]


class CameraOut(BaseModel):
    id: str
    site: str
    name: str
    location: str
    enabled: bool
    health: str | None
    last_segment_end: datetime | None


class AccessRequestIn(BaseModel):
    model_config = {"extra": "forbid"}

    cameras: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]] = Field(
        min_length=1, max_length=32
    )
    start: AwareDatetime = Field(description="Start of the range (inclusive), with offset")
    end: AwareDatetime = Field(description="End of the range (exclusive), with offset")
    purpose: str = Field(min_length=1, max_length=64, description="e.g. security_review")
    reason: str = Field(min_length=1, max_length=2000, description="Why, in words")
    ticket: str = Field("", max_length=200, description="Incident or ticket reference")


class GrantOut(BaseModel):
    id: str
    request_id: str
    holder: str
    cameras: list[str]
    start: datetime
    end: datetime
    purpose: str
    granted_by: str
    expires_at: datetime
    revoked_at: datetime | None


class AccessRequestOut(BaseModel):
    id: str
    requester: str
    cameras: list[str]
    start: datetime
    end: datetime
    purpose: str
    reason: str
    ticket: str
    state: str
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    created_at: datetime
    grant: GrantOut | None = None


class DecisionIn(BaseModel):
    model_config = {"extra": "forbid"}

    note: str = Field("", max_length=2000)


class RevokeIn(BaseModel):
    model_config = {"extra": "forbid"}

    reason: str = Field(min_length=1, max_length=2000)


def _grant_out(grant: Grant) -> GrantOut:
    return GrantOut(
        id=grant.id,
        request_id=grant.request_id,
        holder=grant.holder,
        cameras=json.loads(grant.cameras),
        start=grant.start,
        end=grant.end,
        purpose=grant.purpose,
        granted_by=grant.granted_by,
        expires_at=grant.expires_at,
        revoked_at=grant.revoked_at,
    )


def _request_out(request: AccessRequest, grant: Grant | None = None) -> AccessRequestOut:
    return AccessRequestOut(
        id=request.id,
        requester=request.requester,
        cameras=json.loads(request.cameras),
        start=request.start,
        end=request.end,
        purpose=request.purpose,
        reason=request.reason,
        ticket=request.ticket,
        state=request.state,
        decided_by=request.decided_by,
        decided_at=request.decided_at,
        decision_reason=request.decision_reason,
        created_at=request.created_at,
        grant=_grant_out(grant) if grant else None,
    )


@router.get("/cameras", response_model=list[CameraOut])
def cameras(caller: CameraLister, services: ServicesDep) -> list[CameraOut]:
    """Cameras of the caller's sites, with their recording health (metadata only)."""
    p = caller.principal
    with services.uow() as session:
        stmt = select(Camera).order_by(col(Camera.id))
        if ALL_SITES not in p.sites:
            stmt = stmt.where(col(Camera.site_id).in_(sorted(p.sites)))
        rows = list(session.exec(stmt))
        status = {
            s.camera_id: s
            for s in session.exec(
                select(CameraStatus).where(col(CameraStatus.camera_id).in_([c.id for c in rows]))
            )
        }
    services.auditor.record(
        p, "cameras.list", "cameras", "allowed", reason="role: cameras of own sites",
        client=caller.client, details={"count": len(rows)},
    )
    return [
        CameraOut(
            id=c.id,
            site=c.site_id,
            name=c.name,
            location=c.location,
            enabled=c.enabled,
            health=status[c.id].state if c.id in status else None,
            last_segment_end=status[c.id].last_segment_end if c.id in status else None,
        )
        for c in rows
    ]


@router.post("/access-requests", response_model=AccessRequestOut, status_code=201)
def request_access(
    body: AccessRequestIn, caller: Requester, services: ServicesDep
) -> AccessRequestOut:
    """File a request: granted at once when policy allows, else pending for an approver."""
    p = caller.principal
    now = services.ctx.clock.now()
    window = TimeRange(body.start, body.end)
    with services.uow() as session:
        plan = plan_request(
            session, p, cameras=body.cameras, window=window, purpose=body.purpose,
            reason=body.reason, ticket=body.ticket, now=now, policy=services.policy,
        )
        target = "cameras:" + ",".join(plan.cameras)
        details = {
            "start": window.start.isoformat(), "end": window.end.isoformat(),
            "ticket": body.ticket, "request": plan.request.id if plan.request else None,
            "grant": plan.grant.id if plan.grant else None, "reason_given": body.reason,
        }
        # Durable before anything is granted (I10); refusals are logged just the same.
        services.auditor.decision(
            p, "access.request", target, plan.decision, purpose=body.purpose,
            client=caller.client, details=details,
        )
        if plan.decision.outcome is Outcome.REFUSE or plan.request is None:
            raise Forbidden(plan.decision.reason, plan.decision.rule)
        session.add(plan.request)
        if plan.grant is not None:
            session.flush()
            session.add(plan.grant)
    return _request_out(plan.request, plan.grant)


@router.get("/access-requests", response_model=list[AccessRequestOut])
def requests(
    caller: Lister,
    services: ServicesDep,
    state: Annotated[Literal["pending", "granted", "rejected"] | None, Query()] = None,
) -> list[AccessRequestOut]:
    """Your own requests; supervisors also see pending requests of their sites."""
    with services.uow() as session:
        rows = list_requests(session, caller.principal, state)
    return [_request_out(r) for r in rows]


def _decide(
    request_id: ObjectId, body: DecisionIn, caller: Caller, services: ServicesDep, approve: bool
) -> AccessRequestOut:
    p = caller.principal
    now = services.ctx.clock.now()
    action = "access.approve" if approve else "access.reject"
    with services.uow() as session:
        plan = plan_approval(
            session, p, str(request_id), approve=approve, note=body.note, now=now,
            policy=services.policy,
        )
        services.auditor.decision(
            p, action, f"access-request:{request_id}", plan.decision,
            purpose=plan.request.purpose, client=caller.client,
            details={
                "requester": plan.request.requester, "note": body.note,
                "grant": plan.grant.id if plan.grant else None,
            },
        )
        if not plan.decision.allowed:
            raise Forbidden(plan.decision.reason, plan.decision.rule)
        commit_approval(session, plan)
    return _request_out(plan.request, plan.grant)


@router.post("/access-requests/{request_id}/approve", response_model=AccessRequestOut)
def approve(
    request_id: ObjectId, body: DecisionIn, caller: Approver, services: ServicesDep
) -> AccessRequestOut:
    """Approve another person's pending request; issues the grant."""
    return _decide(request_id, body, caller, services, approve=True)


@router.post("/access-requests/{request_id}/reject", response_model=AccessRequestOut)
def reject(
    request_id: ObjectId, body: DecisionIn, caller: Approver, services: ServicesDep
) -> AccessRequestOut:
    """Reject another person's pending request."""
    return _decide(request_id, body, caller, services, approve=False)


@router.get("/grants", response_model=list[GrantOut])
def grants(caller: Lister, services: ServicesDep) -> list[GrantOut]:
    """Your grants that are still usable."""
    with services.uow() as session:
        rows = list_grants(session, caller.principal, services.ctx.clock.now())
    return [_grant_out(g) for g in rows]


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut)
def revoke(grant_id: ObjectId, body: RevokeIn, caller: Revoker, services: ServicesDep) -> GrantOut:
    """End a grant now: its holder, a supervisor of its sites, the privacy officer or an admin."""
    p = caller.principal
    with services.uow() as session:
        plan = plan_revoke(
            session, p, str(grant_id), reason=body.reason, now=services.ctx.clock.now(),
            policy=services.policy,
        )
        services.auditor.decision(
            p, "grant.revoke", f"grant:{grant_id}", plan.decision, purpose=plan.grant.purpose,
            client=caller.client,
            details={"holder": plan.grant.holder, "reason_given": body.reason},
        )
        if not plan.decision.allowed:
            raise Forbidden(plan.decision.reason, plan.decision.rule)
        session.add(plan.grant)
    return _grant_out(plan.grant)
