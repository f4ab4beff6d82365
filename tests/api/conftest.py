"""The access API over a real catalog (SQLite and PostgreSQL), a real filesystem store holding
real encrypted native segments, and the real group-commit ledger.

Two sites: ``tokyo-1`` (camera ``cam-a``, with the recorded footage of tests/integration/
test_clip.py: segments at T0+0..6 s and T0+9..13 s, and ``cam-c`` without footage) and
``osaka-1`` (camera ``cam-b``, no footage). One user per role and site, named
``{role}-{site}`` (e.g. ``operator-tokyo``). The clock is fixed one hour after the footage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from access_api.policy import Role
from access_api.principals import add_user
from cctv_vault.runtime import build_api
from tests.integration.test_clip import T0, Native, natives  # noqa: F401  (fixture)
from tests.support.configs import SITE_AND_POLICY
from vault.catalog import sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.ledger import LedgerWriter
from vault.lifecycle import VaultContext, commit_segment
from vault.models import AuditEvent
from vault.settings import Settings
from vault.store.base import ObjectStore
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock

CONFIG = SITE_AND_POLICY + """
[[sites]]
id = "osaka-1"
name = "Osaka DC1"
timezone = "Asia/Tokyo"

[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }

[[cameras]]
id = "cam-c"
site = "tokyo-1"
name = "Side door"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.7/stream1" }

[[cameras]]
id = "cam-b"
site = "osaka-1"
name = "Loading dock"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.6/stream1" }
"""

NOW = T0 + timedelta(hours=1)
PASSWORD = "correct horse battery staple"
SITES = {"tokyo": "tokyo-1", "osaka": "osaka-1"}
S = timedelta(seconds=1)


class OrderLog:
    """One list both the ledger and the store append to: proves what happened first."""

    def __init__(self) -> None:
        self.entries: list[str] = []


class RecordingSink:
    """The real ledger writer, with each durable write noted in the order log."""

    def __init__(self, writer: LedgerWriter, log: OrderLog) -> None:
        self.writer = writer
        self.log = log

    def write(self, draft: Any) -> int:
        seq = self.writer.write(draft)
        self.log.entries.append(f"audit {draft.action} {draft.decision} {draft.target}")
        return seq

    async def write_async(self, draft: Any) -> int:
        seq = await self.writer.write_async(draft)
        self.log.entries.append(f"audit {draft.action} {draft.decision} {draft.target}")
        return seq

    @property
    def write_timeout_s(self) -> float:
        return self.writer.write_timeout_s

    def submit(self, draft: Any) -> asyncio.Future[int]:
        future = self.writer.submit(draft)

        def noted(done: asyncio.Future[int]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.log.entries.append(f"audit {draft.action} {draft.decision} {draft.target}")

        future.add_done_callback(noted)
        return future


class RecordingStore:
    """The real filesystem store, with each read noted in the order log."""

    def __init__(self, inner: ObjectStore, log: OrderLog) -> None:
        self._inner = inner
        self.log = log

    def get(self, key: str, *args: Any, **kwargs: Any) -> bytes:
        self.log.entries.append(f"get {key}")
        return self._inner.get(key, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class Api:
    client: TestClient
    ctx: VaultContext
    clock: FixedClock
    order: OrderLog
    settings: Settings
    segments: list[str]
    tokens: dict[str, str] = field(default_factory=dict)

    def login(self, user: str, password: str = PASSWORD) -> Response:
        return self.client.post("/auth/token", json={"username": user, "password": password})

    def token(self, user: str) -> str:
        if user not in self.tokens:
            resp = self.login(user)
            assert resp.status_code == 200, resp.text
            self.tokens[user] = resp.json()["access_token"]
        return self.tokens[user]

    def as_(self, user: str | None) -> dict[str, str]:
        return {} if user is None else {"Authorization": f"Bearer {self.token(user)}"}

    def get(self, path: str, user: str | None, **kwargs: Any) -> Response:
        headers = {**self.as_(user), **kwargs.pop("headers", {})}
        return self.client.get(path, headers=headers, **kwargs)

    def post(self, path: str, user: str | None, body: Any = None, **kwargs: Any) -> Response:
        return self.client.post(path, headers=self.as_(user), json=body or {}, **kwargs)

    def events(self, after: int = 0) -> list[AuditEvent]:
        with unit_of_work(self.ctx.engine) as session:
            return list(
                session.exec(
                    select(AuditEvent)
                    .where(col(AuditEvent.seq) > after)
                    .order_by(col(AuditEvent.seq))
                )
            )

    def head(self) -> int:
        events = self.events()
        return events[-1].seq if events else 0

    def request_access(
        self,
        user: str,
        start: datetime = T0,
        end: datetime = T0 + 13 * S,
        cameras: tuple[str, ...] = ("cam-a",),
        purpose: str = "security_review",
    ) -> Response:
        return self.post(
            "/access-requests",
            user,
            {
                "cameras": list(cameras),
                "start": start.isoformat(),
                "end": end.isoformat(),
                "purpose": purpose,
                "reason": "tailgating reported at the main entrance",
                "ticket": "INC-1",
            },
        )

    def grant(self, user: str = "operator-tokyo", **kwargs: Any) -> str:
        resp = self.request_access(user, **kwargs)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["state"] == "granted", body
        grant_id: str = body["grant"]["id"]
        return grant_id

    def pending_request(self, user: str = "operator-tokyo") -> str:
        """A request for footage older than the automatic window: waits for a supervisor."""
        old = NOW - timedelta(days=30)
        resp = self.request_access(user, start=old, end=old + timedelta(minutes=5))
        assert resp.status_code == 201, resp.text
        assert resp.json()["state"] == "pending"
        request_id: str = resp.json()["id"]
        return request_id


def make_api(
    engine: Engine, tmp_path: Path, keys: LocalKeyProvider, footage: list[Native],
    **settings: Any,
) -> Iterator[Api]:
    order = OrderLog()
    clock = FixedClock(NOW)
    store = FilesystemStore(tmp_path / "store")
    ctx = VaultContext(engine=engine, store=store, keys=keys, clock=clock)
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
        for role in Role:
            for short, site in SITES.items():
                add_user(session, f"{role.value.replace('_', '-')}-{short}", [role.value],
                         [site], NOW, password=PASSWORD)
    spool = tmp_path / "spool"
    spool.mkdir()
    for native in footage:
        native.pending.media_path(spool).write_bytes(native.media)
        native.pending.thumb_path(spool).write_bytes(b"\xff\xd8\xff\xe0test-thumbnail\xff\xd9")
        native.pending.save(spool)
        commit_segment(ctx, native.pending, spool)
    recorded = VaultContext(
        engine=engine, store=RecordingStore(store, order), keys=keys, clock=clock
    )
    config = Settings(data_dir=tmp_path, **settings)
    writer = LedgerWriter(
        engine, batch_max=config.ledger_batch_max, batch_wait_s=0.002,
        write_timeout_s=config.ledger_write_timeout_s,
    )
    app, _ = build_api(config, recorded, sink=RecordingSink(writer, order))
    try:
        with TestClient(app) as client:
            yield Api(
                client=client, ctx=recorded, clock=clock, order=order, settings=config,
                segments=[n.pending.segment_id for n in footage],
            )
    finally:
        writer.close()


@pytest.fixture
def api(
    engine: Engine, tmp_path: Path, keys: LocalKeyProvider, natives: list[Native]  # noqa: F811
) -> Iterator[Api]:
    yield from make_api(engine, tmp_path, keys, natives)


def problem(resp: Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem with ``status``; return its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body: dict[str, Any] = json.loads(resp.content)
    assert body["status"] == status and body["title"] and body["detail"]
    return body
