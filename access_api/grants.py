"""Access requests and grants: the service behind viewing (DESIGN §7).

Functions here *plan*: they read, call the pure policy and return the decision together with
the rows to write, unsaved. The route writes the audit event first (durable), then adds the
rows and lets the unit of work commit: the ledger may hold an intention whose commit then
failed, never a grant that the ledger does not know about (I10). It also keeps SQLite's single
write lock free while the ledger writes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, literal_column, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, or_, select

from access_api.policy import (
    AccessPolicy,
    Action,
    ApproveFacts,
    Decision,
    GrantFacts,
    Outcome,
    PrincipalView,
    RequestFacts,
    RevokeFacts,
    Role,
    decide,
)
from vault.db import Prepared
from vault.errors import Conflict, InvalidInput, NotFound
from vault.models import AccessRequest, Camera, Grant
from vault.timerange import TimeRange, as_utc

__all__ = [
    "MAX_CAMERAS_PER_REQUEST",
    "ApprovalPlan",
    "RequestPlan",
    "RevokePlan",
    "commit_approval",
    "grant_facts",
    "camera_site_and_grant",
    "list_grants",
    "list_requests",
    "plan_approval",
    "plan_request",
    "plan_revoke",
    "visible_camera",
]

MAX_CAMERAS_PER_REQUEST = 32


def visible_camera(session: Session, principal: PrincipalView, camera_id: str) -> Camera:
    """The camera, if it exists within the caller's sites; otherwise the same NotFound (I4)."""
    camera = session.get(Camera, camera_id)
    if camera is None or not principal.covers_site(camera.site_id):
        raise NotFound(f"no camera {camera_id!r}")
    return camera


_CAM = Camera.__table__.c  # type: ignore[attr-defined]
_GRANT_TABLE = Grant.__table__  # type: ignore[attr-defined]
_GRANT = _GRANT_TABLE.c
# Read on every footage call: a plain Core statement, compiled once, run on the cursor.
_GRANT_COLUMNS = (
    _GRANT.id, _GRANT.holder, _GRANT.cameras, _GRANT.start, _GRANT.end, _GRANT.purpose,
    _GRANT.expires_at, _GRANT.revoked_at,
)
# The camera's site and the grant in one statement (one snapshot, one round trip): the grant
# table outer-joined to a one-row select, so a missing grant still answers the camera.
_ONE = core_select(literal_column("1").label("one")).subquery("one")
_CAMERA_SITE_AND_GRANT = Prepared(core_select(
    core_select(_CAM.site_id).where(_CAM.id == bindparam("camera")).scalar_subquery()
    .label("camera_site"),
    *_GRANT_COLUMNS,
).select_from(_ONE.outerjoin(_GRANT_TABLE, _GRANT.id == bindparam("grant"))))


def camera_site_and_grant(
    conn: Connection, camera_id: str, grant_id: str
) -> tuple[str | None, GrantFacts | None]:
    """The camera's site (None: no such camera) and the grant's facts (None: no such grant),
    read together. Visibility to the caller is the caller's check (I4)."""
    (row,) = _CAMERA_SITE_AND_GRANT.rows(conn, {"camera": camera_id, "grant": grant_id})
    site = None if row.camera_site is None else str(row.camera_site)
    return site, None if row.id is None else _grant_facts_row(row)


def _grant_facts_row(row: Any) -> GrantFacts:
    """From a ``Grant`` or a row with its columns."""
    return GrantFacts(
        id=row.id,
        holder=row.holder,
        cameras=frozenset(json.loads(row.cameras)),
        window=TimeRange(row.start, row.end),
        purpose=row.purpose,
        expires_at=as_utc(row.expires_at),
        revoked=row.revoked_at is not None,
    )


def grant_facts(grant: Grant) -> GrantFacts:
    return _grant_facts_row(grant)


def _new_grant(request: AccessRequest, granted_by: str, now: datetime, pol: AccessPolicy) -> Grant:
    return Grant(
        id=str(uuid.uuid4()),
        request_id=request.id,
        holder=request.requester,
        cameras=request.cameras,
        start=request.start,
        end=request.end,
        purpose=request.purpose,
        granted_by=granted_by,
        created_at=now,
        expires_at=now + pol.grant_ttl,
    )


@dataclass
class RequestPlan:
    decision: Decision
    request: AccessRequest | None = None
    grant: Grant | None = None
    cameras: list[str] = field(default_factory=list)


def plan_request(
    session: Session,
    principal: PrincipalView,
    *,
    cameras: list[str],
    window: TimeRange,
    purpose: str,
    reason: str,
    ticket: str,
    now: datetime,
    policy: AccessPolicy,
) -> RequestPlan:
    reason = reason.strip()
    if len(reason) < 10:
        raise InvalidInput("reason must say why, in at least 10 characters")
    if not cameras:
        raise InvalidInput("cameras must name at least one camera")
    if len(set(cameras)) > MAX_CAMERAS_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_CAMERAS_PER_REQUEST} cameras per request")
    if window.duration.total_seconds() <= 0:
        raise InvalidInput("the range is empty: end must be after start")
    if window.end > now:
        raise InvalidInput("the range ends in the future: footage can only be asked for up to now")
    wanted = sorted(set(cameras))
    camera_sites = {c: visible_camera(session, principal, c).site_id for c in wanted}
    decision = decide(
        principal,
        Action.ACCESS_REQUEST,
        RequestFacts(camera_sites=camera_sites, window=window, purpose=purpose),
        now,
        policy,
    )
    if decision.outcome is Outcome.REFUSE:
        return RequestPlan(decision, cameras=wanted)
    request = AccessRequest(
        id=str(uuid.uuid4()),
        requester=principal.name,
        requester_role=principal.primary_role,
        cameras=json.dumps(wanted),
        sites=json.dumps(sorted(set(camera_sites.values()))),
        start=window.start,
        end=window.end,
        purpose=purpose,
        reason=reason,
        ticket=ticket.strip(),
        state="pending",
        created_at=now,
    )
    grant = None
    if decision.outcome is Outcome.ALLOW:
        request.state = "granted"
        request.decided_by = "policy:auto-grant"
        request.decided_at = now
        request.decision_reason = decision.reason
        grant = _new_grant(request, "policy:auto-grant", now, policy)
    return RequestPlan(decision, request, grant, wanted)


@dataclass
class ApprovalPlan:
    decision: Decision
    request: AccessRequest
    grant: Grant | None = None


def _request_or_404(session: Session, principal: PrincipalView, request_id: str) -> AccessRequest:
    request = session.get(AccessRequest, request_id)
    visible = request is not None and (
        request.requester == principal.name
        or principal.has(Role.PRIVACY_OFFICER)
        or (principal.has(Role.SUPERVISOR) and principal.covers_sites(json.loads(request.sites)))
    )
    if request is None or not visible:
        raise NotFound(f"no access request {request_id!r}")
    return request


def plan_approval(
    session: Session,
    principal: PrincipalView,
    request_id: str,
    *,
    approve: bool,
    note: str,
    now: datetime,
    policy: AccessPolicy,
) -> ApprovalPlan:
    request = _request_or_404(session, principal, request_id)
    decision = decide(
        principal,
        Action.ACCESS_APPROVE,
        ApproveFacts(
            requester=request.requester,
            purpose=request.purpose,
            sites=frozenset(json.loads(request.sites)),
            state=request.state,
        ),
        now,
        policy,
    )
    if not decision.allowed:
        return ApprovalPlan(decision, request)
    # The change is applied by a conditional UPDATE in commit_approval (two approvers racing
    # must not both win); the loaded row must not be flushed behind its back.
    session.expunge(request)
    request.state = "granted" if approve else "rejected"
    request.decided_by = principal.name
    request.decided_at = now
    request.decision_reason = note.strip()
    grant = _new_grant(request, principal.name, now, policy) if approve else None
    return ApprovalPlan(decision, request, grant)


def commit_approval(session: Session, plan: ApprovalPlan) -> None:
    """Apply an allowed approval; a request decided meanwhile by someone else is a conflict."""
    request = plan.request
    result = session.execute(
        update(AccessRequest)
        .where(col(AccessRequest.id) == request.id)
        .where(col(AccessRequest.state) == "pending")
        .values(
            state=request.state,
            decided_by=request.decided_by,
            decided_at=request.decided_at,
            decision_reason=request.decision_reason,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"access request {request.id} was decided meanwhile")
    if plan.grant is not None:
        session.add(plan.grant)


@dataclass
class RevokePlan:
    decision: Decision
    grant: Grant


def plan_revoke(
    session: Session,
    principal: PrincipalView,
    grant_id: str,
    *,
    reason: str,
    now: datetime,
    policy: AccessPolicy,
) -> RevokePlan:
    grant = session.get(Grant, grant_id)
    if grant is None:
        raise NotFound(f"no grant {grant_id!r}")
    request = session.get(AccessRequest, grant.request_id)
    sites = frozenset(json.loads(request.sites)) if request else frozenset()
    if not (
        grant.holder == principal.name
        or principal.has(Role.PRIVACY_OFFICER)
        or principal.has(Role.ADMIN)
        or (principal.has(Role.SUPERVISOR) and principal.covers_sites(sites))
    ):
        raise NotFound(f"no grant {grant_id!r}")
    decision = decide(
        principal, Action.GRANT_REVOKE, RevokeFacts(grant_facts(grant), sites), now, policy
    )
    if decision.allowed:
        grant.revoked_at = now
        grant.revoked_by = principal.name
        grant.revoke_reason = reason.strip()
    return RevokePlan(decision, grant)


def list_requests(
    session: Session, principal: PrincipalView, state: str | None = None
) -> list[AccessRequest]:
    stmt = select(AccessRequest).order_by(col(AccessRequest.created_at).desc()).limit(500)
    if state:
        stmt = stmt.where(AccessRequest.state == state)
    if not principal.has(Role.PRIVACY_OFFICER):
        if principal.has(Role.SUPERVISOR):
            mine_or_pending = or_(
                col(AccessRequest.requester) == principal.name, AccessRequest.state == "pending"
            )
            stmt = stmt.where(mine_or_pending)
        else:
            stmt = stmt.where(col(AccessRequest.requester) == principal.name)
    rows = list(session.exec(stmt))
    return [
        r
        for r in rows
        if r.requester == principal.name
        or principal.has(Role.PRIVACY_OFFICER)
        or principal.covers_sites(json.loads(r.sites))
    ]


def list_grants(session: Session, principal: PrincipalView, now: datetime) -> list[Grant]:
    stmt = (
        select(Grant)
        .where(Grant.holder == principal.name)
        .where(col(Grant.revoked_at).is_(None))
        .where(col(Grant.expires_at) > as_utc(now))
        .order_by(col(Grant.created_at).desc())
    )
    return list(session.exec(stmt))
