"""P3 breakdown: the CPU one timeline call costs, part by part, one call at a time.

In the benchmark's own process, over the same vault and requests as the HTTP runs: each part of
``GET /cameras/{id}/timeline`` is called the way the route calls it, sequentially, and timed
with ``time.process_time`` (all threads of this process, so the ledger writer's thread counts
when it is involved). Sequential calls see no thread-pool, GIL or connection-pool contention
and no other worker: what remains is what the code itself costs, which the HTTP figures then
multiply. The whole request is driven through the ASGI app directly (no HTTP client, no
server), once with the real ``LedgerWriter`` and once with ``NullLedger``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from fastapi import FastAPI

from access_api.deps import ApiServices, Caller
from access_api.principals import resolve
from access_api.routes import footage
from cctv_vault.runtime import build_api, open_vault
from vault.catalog import timeline
from vault.ledger import EventDraft, LedgerWriter, NullLedger
from vault.settings import Settings
from vault.timerange import TimeRange

__all__ = ["breakdown"]


class _Call:
    """One pool entry, parsed as the route sees it."""

    def __init__(self, path: str, token: str) -> None:
        url = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.path, self.query, self.token = url.path, url.query, token
        self.camera = url.path.split("/")[2]
        self.window = TimeRange(
            datetime.fromisoformat(query["from"]), datetime.fromisoformat(query["to"])
        )
        self.grant = UUID(query["grant"])


def _cpu_us(fn: Callable[[_Call], Any], calls: list[_Call], n: int) -> float:
    """CPU µs per call (all threads of this process), after a short warm-up."""
    for c in calls[:20]:
        fn(c)
    started = time.process_time()
    for i in range(n):
        fn(calls[i % len(calls)])
    return (time.process_time() - started) / n * 1e6


async def _asgi_get(app: FastAPI, call: _Call) -> int:
    """One GET through the ASGI app: the status it answered."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": call.path, "raw_path": call.path.encode(),
        "query_string": call.query.encode(), "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {call.token}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _async_cpu_us(fn: Callable[[_Call], Any], calls: list[_Call], n: int) -> float:
    """CPU µs per awaited call of ``fn`` (a coroutine function), all on one event loop."""

    async def run(count: int) -> None:
        for i in range(count):
            await fn(calls[i % len(calls)])

    asyncio.run(run(20))
    started = time.process_time()
    asyncio.run(run(n))
    return (time.process_time() - started) / n * 1e6


def _requests_us(app: FastAPI, calls: list[_Call], n: int) -> float:
    async def run(count: int) -> None:
        for i in range(count):
            status = await _asgi_get(app, calls[i % len(calls)])
            if status != 200:
                raise SystemExit(f"breakdown: the timeline answered {status}")

    asyncio.run(run(20))
    started = time.process_time()
    asyncio.run(run(n))
    return (time.process_time() - started) / n * 1e6


def breakdown(
    data_dir: Path, database_url: str | None, pool: list[tuple[str, str]], n: int = 500
) -> list[tuple[str, float]]:
    """(part, CPU µs per call) for ``n`` calls of each part over ``pool`` (path, holder)."""
    settings = Settings(data_dir=data_dir, database_url=database_url)
    ctx = open_vault(settings)
    app_off, _ = build_api(settings, ctx, sink=NullLedger())
    services: ApiServices = app_off.state.services
    tokens = {holder: services.tokens.issue(holder)[0] for _path, holder in pool}
    calls = [_Call(path, tokens[holder]) for path, holder in pool]
    writer = LedgerWriter(
        ctx.engine, batch_max=settings.ledger_batch_max,
        batch_wait_s=settings.ledger_batch_wait_ms / 1000,
        write_timeout_s=settings.ledger_write_timeout_s,
    )
    app_on, _ = build_api(settings, ctx, sink=writer)
    try:

        def principal(c: _Call) -> Caller:
            identity = services.tokens.verify(c.token)
            with services.reading() as conn:
                return Caller(principal=resolve(conn, identity), client="127.0.0.1")

        callers = {c.token: principal(c) for c in calls}

        def lookup(c: _Call) -> None:
            identity = services.tokens.verify(c.token)
            with services.reading() as conn:
                resolve(conn, identity)

        def catalog(c: _Call) -> None:
            with services.reading() as conn:
                timeline(conn, c.camera, c.window)

        async def gate(c: _Call) -> None:
            # The route's own scope read and gate; its audit event goes to NullLedger.
            with services.reading() as conn:
                scope = footage._read_scope(conn, callers[c.token], c.camera, c.grant)
            await footage._gate(
                services, callers[c.token], scope, window=c.window, action="footage.timeline",
                target=f"camera:{c.camera}",
            )

        async def handler(c: _Call) -> None:
            await footage.timeline(
                c.camera, c.window.start, c.window.end, c.grant, callers[c.token], services
            )

        def append(c: _Call) -> None:
            writer.write(EventDraft(
                at=ctx.clock.now(), actor="bench", role="operator", action="footage.timeline",
                target=f"camera:{c.camera}", decision="allowed", purpose="security_review",
                reason="footage: bench", client="127.0.0.1", details={"grant": str(c.grant)},
            ))

        return [
            ("JWT verify (TokenService.verify; a known token: lifetime only)",
             _cpu_us(lambda c: services.tokens.verify(c.token), calls, n)),
            ("JWT verify + principal lookup (its connection)", _cpu_us(lookup, calls, n)),
            ("catalog timeline: segments + gaps (a connection)", _cpu_us(catalog, calls, n)),
            ("gate: camera + grant (one statement), decide, audit draft to NullLedger",
             _async_cpu_us(gate, calls, n)),
            ("timeline handler, ledger off (catalog reads + gate + response)",
             _async_cpu_us(handler, calls, n)),
            ("one ledger append alone (LedgerWriter.write, batch of 1)",
             _cpu_us(append, calls, n)),
            ("whole request through the ASGI app, ledger off", _requests_us(app_off, calls, n)),
            ("whole request through the ASGI app, ledger on", _requests_us(app_on, calls, n)),
        ]
    finally:
        writer.close()
        ctx.engine.dispose()
