"""The ledger, for auditors and the privacy officer: filtered, exported as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel
from sqlmodel import col, select

from access_api.deps import Caller, ServicesDep, requires
from access_api.policy import Action
from vault.models import AuditEvent

router = APIRouter(tags=["audit"])

AuditReader = Annotated[Caller, Depends(requires(Action.AUDIT_READ))]

_COLUMNS = (
    "seq", "at", "actor", "role", "action", "target", "purpose", "decision", "reason", "client",
    "details", "prev_hash", "hash",
)


class AuditEventOut(BaseModel):
    seq: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    purpose: str
    decision: str
    reason: str
    client: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@router.get(
    "/audit",
    response_model=list[AuditEventOut],
    responses={200: {"content": {"text/csv": {}}}},
)
def audit(
    caller: AuditReader,
    services: ServicesDep,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100, description="Exact, or prefix.*")] = None,
    target: Annotated[str | None, Query(max_length=500)] = None,
    decision: Annotated[str | None, Query(max_length=16)] = None,
    after_seq: Annotated[int, Query(ge=0, description="Only events after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    format: Annotated[Literal["json", "csv"], Query()] = "json",  # noqa: A002
) -> Any:
    """Events in sequence order, filtered; page with ``after_seq``. Reading is itself logged."""
    stmt = select(AuditEvent).where(col(AuditEvent.seq) > after_seq)
    if start is not None:
        stmt = stmt.where(col(AuditEvent.at) >= start)
    if end is not None:
        stmt = stmt.where(col(AuditEvent.at) < end)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        if action.endswith(".*"):
            stmt = stmt.where(col(AuditEvent.action).startswith(action[:-1]))
        else:
            stmt = stmt.where(AuditEvent.action == action)
    if target:
        stmt = stmt.where(AuditEvent.target == target)
    if decision:
        stmt = stmt.where(AuditEvent.decision == decision)
    stmt = stmt.order_by(col(AuditEvent.seq)).limit(limit)
    with services.uow() as session:
        events = list(session.exec(stmt))
    filters = {
        "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
        "actor": actor, "action": action, "target": target, "decision": decision,
        "after_seq": after_seq, "limit": limit, "format": format, "returned": len(events),
    }
    services.auditor.record(
        caller.principal, "audit.read", "ledger", "allowed", reason="role: reads the ledger",
        client=caller.client, details=filters,
    )
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(_COLUMNS)
        for ev in events:
            writer.writerow([getattr(ev, c) if c != "at" else ev.at.isoformat() for c in _COLUMNS])
        return Response(
            buffer.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return [
        AuditEventOut(
            seq=ev.seq, at=ev.at, actor=ev.actor, role=ev.role, action=ev.action,
            target=ev.target, purpose=ev.purpose, decision=ev.decision, reason=ev.reason,
            client=ev.client, details=json.loads(ev.details), prev_hash=ev.prev_hash,
            hash=ev.hash,
        )
        for ev in events
    ]
