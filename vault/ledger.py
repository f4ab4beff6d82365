"""Hash-chained, append-only audit ledger (DESIGN §8).

``hash = SHA-256(prev_hash || canonical JSON of the event)``; the first event chains from 64
zeros. The chain head is serialised per transaction (an advisory lock on PostgreSQL, the write
lock on SQLite) so that concurrent writers still form one chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from vault.models import AuditEvent
from vault.timerange import as_utc

__all__ = ["GENESIS", "append", "canonical", "event_hash", "verify_chain"]

GENESIS = "0" * 64
_LOCK_KEY = 0x6C6564676572  # "ledger"


def canonical(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _body(ev: AuditEvent) -> dict[str, Any]:
    return {
        "seq": ev.seq,
        "at": as_utc(ev.at).isoformat(timespec="microseconds"),
        "actor": ev.actor,
        "role": ev.role,
        "action": ev.action,
        "target": ev.target,
        "purpose": ev.purpose,
        "decision": ev.decision,
        "reason": ev.reason,
        "client": ev.client,
        "details": json.loads(ev.details),
    }


def event_hash(prev_hash: str, ev: AuditEvent) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(_body(ev))).hexdigest()


def append(
    session: Session,
    *,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    target: str,
    decision: str,
    purpose: str = "",
    reason: str = "",
    client: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event inside the caller's transaction; durable when that transaction commits."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    head = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1)).first()
    seq = 1 if head is None else head.seq + 1
    prev = GENESIS if head is None else head.hash
    ev = AuditEvent(
        seq=seq,
        at=as_utc(at),
        actor=actor,
        role=role,
        action=action,
        target=target,
        purpose=purpose,
        decision=decision,
        reason=reason,
        client=client,
        details=json.dumps(dict(details or {}), sort_keys=True, default=str),
        prev_hash=prev,
        hash="",
    )
    ev.hash = event_hash(prev, ev)
    session.add(ev)
    session.flush()
    return ev


def verify_chain(session: Session) -> int | None:
    """Return the first sequence number whose event does not verify, or None if all do."""
    prev = GENESIS
    expected_seq = 1
    for ev in session.exec(select(AuditEvent).order_by(col(AuditEvent.seq))):
        if ev.seq != expected_seq or ev.prev_hash != prev or event_hash(prev, ev) != ev.hash:
            return expected_seq if ev.seq != expected_seq else ev.seq
        prev = ev.hash
        expected_seq += 1
    return None
