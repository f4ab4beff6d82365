"""Writing the API's decisions to the ledger: one event per decision, durable before acting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from access_api.policy import Decision, PrincipalView
from vault.ledger import AuditSink, EventDraft
from vault.timerange import Clock

__all__ = ["Auditor"]


class Auditor:
    """Records who did what, on which target, for which purpose, with which decision (I10).

    ``record`` returns only once the event is durable and raises
    :class:`vault.errors.Unavailable` otherwise, so callers that send footage after it honour
    I3 by construction.
    """

    def __init__(self, sink: AuditSink, clock: Clock) -> None:
        self.sink = sink
        self.clock = clock

    def record(
        self,
        who: PrincipalView | str,
        action: str,
        target: str,
        decision: str,
        *,
        purpose: str = "",
        reason: str = "",
        client: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        return self.sink.write(
            self._draft(who, action, target, decision, purpose, reason, client, details)
        )

    async def arecord(
        self,
        who: PrincipalView | str,
        action: str,
        target: str,
        decision: str,
        *,
        purpose: str = "",
        reason: str = "",
        client: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        """:meth:`record` for a caller on the event loop: awaits durability, blocks nothing."""
        return await self.sink.write_async(
            self._draft(who, action, target, decision, purpose, reason, client, details)
        )

    async def adecision(
        self,
        who: PrincipalView,
        action: str,
        target: str,
        decision: Decision,
        *,
        purpose: str = "",
        client: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        return await self.arecord(
            who,
            action,
            target,
            decision.outcome.value,
            purpose=purpose,
            reason=f"{decision.rule}: {decision.reason}",
            client=client,
            details=details,
        )

    def _draft(
        self,
        who: PrincipalView | str,
        action: str,
        target: str,
        decision: str,
        purpose: str,
        reason: str,
        client: str,
        details: Mapping[str, Any] | None,
    ) -> EventDraft:
        if isinstance(who, PrincipalView):
            actor, role = who.name, who.primary_role
        else:
            actor, role = who, "none"
        return (
            EventDraft(
                at=self.clock.now(),
                actor=actor,
                role=role,
                action=action,
                target=target,
                decision=decision,
                purpose=purpose,
                reason=reason,
                client=client,
                details=dict(details or {}),
            )
        )

    def decision(
        self,
        who: PrincipalView,
        action: str,
        target: str,
        decision: Decision,
        *,
        purpose: str = "",
        client: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        return self.record(
            who,
            action,
            target,
            decision.outcome.value,
            purpose=purpose,
            reason=f"{decision.rule}: {decision.reason}",
            client=client,
            details=details,
        )
