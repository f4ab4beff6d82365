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
from vault.models import AuditEvent, RetentionPolicy

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


def test_a_config_does_not_change_an_existing_retention_policy(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=AT)
    shorter = CONFIG.replace("days = 90\nmin_days = 90", "days = 30\nmin_days = 30")
    assert shorter != CONFIG
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(shorter), {}, at=AT)
    with unit_of_work(engine) as session:
        policy = session.get(RetentionPolicy, "pci")
        ignored = list(session.exec(
            select(AuditEvent).where(AuditEvent.action == "retention.config_ignored")
        ))
    assert policy is not None and (policy.days, policy.min_days) == (90, 90)
    assert [json.loads(e.details) for e in ignored] == [
        {"days": {"catalog": 90, "config": 30}, "min_days": {"catalog": 90, "config": 30}}
    ]
