"""AuditBarrier: a response whose request handed in audit events leaves only once they are
durable; a failed or late event turns it into a 503 problem, and its own bytes never leave.

The ledger here is a stand-in whose futures the test settles by hand (the barrier's logic is
what is tested; the real writer under the real app is in test_ledger_down.py and the API
tests, which run every timeline call through this barrier)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from access_api.audit import AuditBarrier, Auditor
from access_api.policy import Decision, Outcome, PrincipalView, Role
from vault.errors import Unavailable
from vault.ledger import EventDraft
from vault.timerange import FixedClock

WHO = PrincipalView(name="op", roles=frozenset({Role.OPERATOR}), sites=frozenset({"s"}))
ALLOWED = Decision(Outcome.ALLOW, "grant", "within the grant")


class HandSettledSink:
    """``submit`` returns futures the test settles; ``write_async`` is counted."""

    write_timeout_s = 5.0

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[int]] = []
        self.awaited: list[EventDraft] = []

    def write(self, draft: EventDraft) -> int:
        raise AssertionError("not on the event loop")

    async def write_async(self, draft: EventDraft) -> int:
        self.awaited.append(draft)
        return 1

    def submit(self, draft: EventDraft) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def app_that(steps: Callable[[Auditor, Send], Awaitable[None]], auditor: Auditor) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await steps(auditor, send)

    return app


async def audit(auditor: Auditor) -> None:
    await auditor.adecision(WHO, "footage.timeline", "camera:c", ALLOWED, before_send=True)


def start(status: int = 200) -> Message:
    return {"type": "http.response.start", "status": status, "headers": []}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


class Server:
    """What the ASGI server receives, and a running call of the barrier."""

    def __init__(self, app: Any, timeout_s: float = 5.0) -> None:
        self.barrier = AuditBarrier(app, timeout_s=timeout_s)
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def call(self) -> asyncio.Task[None]:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "path": "/cameras/c/timeline", "method": "GET", "headers": []}
        return asyncio.ensure_future(self.barrier(scope, receive, self.send))


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def make_auditor(sink: HandSettledSink) -> Auditor:
    return Auditor(sink, FixedClock(datetime(2026, 11, 29, tzinfo=UTC)))


async def answered_and_held(sink: HandSettledSink, payload: bytes) -> tuple[Server, Any]:
    """A request whose app audits, answers ``payload`` and finishes; returns once the app has
    finished and the barrier is waiting for the event (the call still running)."""
    finished = asyncio.Event()

    async def steps(auditor: Auditor, send: Send) -> None:
        await audit(auditor)
        await send(start())
        await send(body(payload))
        finished.set()

    server = Server(app_that(steps, make_auditor(sink)))
    call = server.call()
    await asyncio.wait_for(finished.wait(), 5)
    await turns()
    return server, call


def test_the_answer_leaves_only_once_its_event_is_durable() -> None:
    async def scenario() -> None:
        sink = HandSettledSink()
        server, call = await answered_and_held(sink, b'{"segments": []}')
        assert len(sink.futures) == 1 and sink.awaited == []  # handed in, not awaited
        assert server.sent == []  # the app is done, nothing has left
        sink.futures[0].set_result(7)
        await asyncio.wait_for(call, 5)
        assert [m["type"] for m in server.sent] == ["http.response.start", "http.response.body"]
        assert server.sent[1]["body"] == b'{"segments": []}'

    asyncio.run(scenario())


@pytest.mark.parametrize("failure", ["error", "late"])
def test_an_event_that_fails_or_is_late_turns_the_answer_into_a_503(failure: str) -> None:
    async def scenario() -> None:
        sink = HandSettledSink()

        async def steps(auditor: Auditor, send: Send) -> None:
            await audit(auditor)
            await send(start())
            await send(body(b"FOOTAGE METADATA"))
            if failure == "error":
                sink.futures[0].set_exception(Unavailable("audit ledger unavailable: locked"))

        server = Server(app_that(steps, make_auditor(sink)), timeout_s=0.05)
        await asyncio.wait_for(server.call(), 5)
        assert server.sent[0]["status"] == 503
        sent = b"".join(m.get("body", b"") for m in server.sent)
        assert b"FOOTAGE METADATA" not in sent
        detail = json.loads(sent)["detail"]
        if failure == "error":
            assert detail == "audit ledger unavailable: locked"
        else:
            assert detail == "audit ledger unavailable: not durable within 0.05s"
            assert sink.futures[0].cancelled()  # given up: a batch will not take it now

    asyncio.run(scenario())


def test_a_streamed_body_waits_at_its_first_chunk() -> None:
    async def scenario() -> None:
        sink = HandSettledSink()
        progress: list[str] = []
        at_first_chunk = asyncio.Event()

        async def steps(auditor: Auditor, send: Send) -> None:
            await audit(auditor)
            await send(start())
            progress.append("start handed over")
            at_first_chunk.set()
            await send(body(b"chunk 1", more=True))
            progress.append("chunk 1 handed over")
            await send(body(b"chunk 2"))

        server = Server(app_that(steps, make_auditor(sink)))
        call = server.call()
        await asyncio.wait_for(at_first_chunk.wait(), 5)
        await turns()
        # The app is held at its first chunk, and nothing has left.
        assert progress == ["start handed over"] and server.sent == []
        sink.futures[0].set_result(3)
        await asyncio.wait_for(call, 5)
        assert progress == ["start handed over", "chunk 1 handed over"]
        assert [m.get("body") for m in server.sent] == [None, b"chunk 1", b"chunk 2"]

    asyncio.run(scenario())


def test_a_request_without_events_passes_straight_through() -> None:
    async def scenario() -> None:
        sink = HandSettledSink()
        seen_by_server: list[int] = []

        async def steps(auditor: Auditor, send: Send) -> None:
            await send(start(404))
            seen_by_server.append(len(server.sent))
            await send(body(b"{}"))

        server = Server(app_that(steps, make_auditor(sink)))
        await asyncio.wait_for(server.call(), 5)
        assert seen_by_server == [1]  # the start went out before the app went on
        assert [m.get("status") for m in server.sent] == [404, None]

    asyncio.run(scenario())


def test_an_event_after_the_answer_started_is_awaited_in_place() -> None:
    async def scenario() -> None:
        sink = HandSettledSink()

        async def steps(auditor: Auditor, send: Send) -> None:
            await send(start())
            await audit(auditor)  # too late to hold the answer: durable before going on
            await send(body(b"x"))

        server = Server(app_that(steps, make_auditor(sink)))
        await asyncio.wait_for(server.call(), 5)
        assert sink.futures == [] and len(sink.awaited) == 1
        assert [m["type"] for m in server.sent] == ["http.response.start", "http.response.body"]

    asyncio.run(scenario())


def test_without_a_barrier_the_decision_is_awaited() -> None:
    sink = HandSettledSink()
    asyncio.run(audit(make_auditor(sink)))
    assert sink.futures == [] and len(sink.awaited) == 1


def test_a_request_cancelled_while_it_waits_leaves_its_decision_to_be_written() -> None:
    """Its client gone, the request is cancelled: no answer leaves, but the decision already
    made is not given up (I10): the ledger still writes it."""

    async def scenario() -> None:
        sink = HandSettledSink()
        server, call = await answered_and_held(sink, b"{}")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert server.sent == []
        assert not sink.futures[0].cancelled()  # still the ledger's to write
        sink.futures[0].set_result(9)

    asyncio.run(scenario())
