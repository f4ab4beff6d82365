"""Writing the API's decisions to the ledger: one event per decision, durable before acting
or, for answers built from the catalog alone, before the answer leaves (:class:`AuditBarrier`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from access_api.policy import Decision, PrincipalView
from access_api.problems import problem
from vault.errors import ErrorKind, VaultError
from vault.ledger import AuditSink, EventDraft
from vault.timerange import Clock

__all__ = ["AuditBarrier", "Auditor"]


@dataclass(slots=True)
class _Held:
    """One request's events handed to the ledger and not yet known durable."""

    events: list[asyncio.Future[int]] = field(default_factory=list)
    released: bool = False  # the response has started: later events are awaited in place


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("audit_held", default=None)


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
        before_send: bool = False,
    ) -> None:
        """:meth:`decision` on the event loop: durable when this returns.

        ``before_send``: durable before the response leaves (I3), not before this returns:
        under :class:`AuditBarrier` the event is handed to the ledger and the request goes on
        while it commits; the barrier holds the response until it is durable and answers 503
        instead if it cannot be written. Without a barrier, or once the response has started,
        it is awaited here all the same. For answers built from the catalog alone (a
        timeline): nothing of the request's work needs the event first, only its answer does.
        Routes that read footage do not use it, so no footage is even decrypted for a view the
        ledger has not recorded.
        """
        draft = self._decision_draft(who, action, target, decision, purpose, client, details)
        held = _HELD.get() if before_send else None
        if held is None or held.released:
            await self.sink.write_async(draft)
        else:
            held.events.append(self.sink.submit(draft))

    def _decision_draft(
        self,
        who: PrincipalView,
        action: str,
        target: str,
        decision: Decision,
        purpose: str,
        client: str,
        details: Mapping[str, Any] | None,
    ) -> EventDraft:
        return self._draft(
            who, action, target, decision.outcome.value, purpose,
            f"{decision.rule}: {decision.reason}", client, details,
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
        return self.sink.write(
            self._decision_draft(who, action, target, decision, purpose, client, details)
        )


def _observe(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


class AuditBarrier:
    """I3 at the transport: no message of a response leaves before every audit event its
    request handed in through :meth:`Auditor.adecision` with ``before_send`` is durable.

    The app runs to its end while the ledger commits; its response is held (a complete body is
    only a reference to bytes already in memory), then sent once the events are durable — or
    replaced by a 503 problem if one of them fails or is not durable within the ledger's write
    timeout, so a client never receives an answer whose event is missing. A streamed body is
    not held: its first chunk waits for the events. A request that handed in no event passes
    through untouched.

    Waiting here, after the app has finished, rather than inside the route costs the request
    nothing but the wait: resumed ~10 ms later, a suspended route would run the rest of its
    handler and the framework's return path with its data gone from the CPU's caches (P3:
    docs/ref/bench.md).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = _Held()
        token = _HELD.set(held)
        messages: list[Message] = []
        refused = False  # a 503 went out instead: the app's own messages are dropped

        async def release() -> None:
            nonlocal refused
            held.released = True
            failure = await self._durable(held.events)
            if failure is not None:
                refused = True
                await problem(ErrorKind.UNAVAILABLE, failure, scope["path"])(scope, receive, send)
                return
            for message in messages:
                await send(message)

        async def send_after_audit(message: Message) -> None:
            if held.released:
                if not refused:
                    await send(message)
                return
            if not held.events:
                held.released = True  # nothing to wait for: the response goes as it comes
                await send(message)
                return
            messages.append(message)
            if message["type"] == "http.response.body" and message.get("more_body", False):
                await release()  # a stream: wait here rather than hold all of it

        try:
            await self.app(scope, receive, send_after_audit)
        except BaseException:
            # No answer of ours follows; the decisions handed in are still written (I10), and
            # their outcome is read here so that a failed one is not reported as unretrieved.
            for future in held.events:
                future.add_done_callback(_observe)
            raise
        finally:
            _HELD.reset(token)
        if not held.released:
            await release()

    async def _durable(self, events: list[asyncio.Future[int]]) -> str | None:
        """Wait for ``events``; None when all are durable, else why not (they are given up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        for future in events:
            if future.done():
                continue
            # A timer that gives the future up, rather than asyncio.wait's waiter, callbacks
            # and timer per call: this wait is on every audited request's path.
            expired = False

            def expire(pending: asyncio.Future[int] = future) -> None:
                nonlocal expired
                # False when the outcome came in the same turn: then it is read, not refused.
                expired = pending.cancel()

            timer = loop.call_at(deadline, expire)
            try:
                # Shielded: the request's own cancellation (its client went away) must not
                # give up a decision already made; it is still written (I10).
                await asyncio.shield(future)
            except asyncio.CancelledError:
                if not expired:  # the request itself was cancelled
                    for other in events:
                        other.add_done_callback(_observe)
                    raise
            except Exception:
                pass  # read below
            finally:
                timer.cancel()
            if expired:
                for other in events:
                    other.cancel()
                return f"audit ledger unavailable: not durable within {self.timeout_s:g}s"
        for future in events:
            if future.cancelled():
                return "audit ledger unavailable: the event was given up"
            error = future.exception()
            if error is not None:
                return error.message if isinstance(error, VaultError) else str(error)
        return None
