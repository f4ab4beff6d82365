"""Camera changes from the config are written to the ledger with the change (I10)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.integration.test_lifecycle import CONFIG
from vault import ledger
from vault.catalog import sync_config
from vault.config import parse_config
from vault.db import unit_of_work
from vault.models import AuditEvent

AT = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def _camera_events(engine: Engine) -> list[tuple[str, str, list[str]]]:
    with unit_of_work(engine) as session:
        events = session.exec(
            select(AuditEvent).where(col(AuditEvent.action).startswith("camera."))
            .order_by(col(AuditEvent.seq))
        )
        return [(e.action, e.target, json.loads(e.details)["fields"]) for e in events]


def test_added_changed_disabled_and_unchanged(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {"cam-a": "rtsp://10.0.0.5/stream1"}, at=AT)
    assert [e[:2] for e in _camera_events(engine)] == [("camera.added", "camera:cam-a")]
    # The same config again changes nothing and logs nothing.
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {"cam-a": "rtsp://10.0.0.5/stream1"}, at=AT)
    assert len(_camera_events(engine)) == 1
    renamed = CONFIG.replace('name = "Main entrance"', 'name = "Gate 2"')
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(renamed), {"cam-a": "rtsp://10.0.0.5/stream1"}, at=AT)
    assert _camera_events(engine)[-1] == ("camera.changed", "camera:cam-a", ["name"])
    without = renamed.split("[[cameras]]")[0]
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(without), {}, at=AT)
    assert _camera_events(engine)[-1] == ("camera.changed", "camera:cam-a", ["enabled"])
    with unit_of_work(engine) as session:
        assert ledger.verify_chain(session) is None
