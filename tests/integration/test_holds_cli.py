"""``cctv-vault retention``: the report's exit codes and output, policy changes from the shell.

The embedded default (SQLite + filesystem store) under a temp data directory: cam-a has two
one-minute segments from T0, on policy ``pci`` (90 days, bounds 90..365).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlmodel import col, select
from typer.testing import CliRunner

from cctv_vault.cli_retention import retention_app
from cctv_vault.runtime import open_vault
from tests.integration.test_cli import T0, data_dir  # noqa: F401  (fixture)
from vault.db import unit_of_work
from vault.holds import apply_change, plan_placement
from vault.models import AuditEvent, RetentionPolicy, Segment
from vault.settings import Settings

runner = CliRunner()


def test_report_exit_code_says_whether_footage_is_overdue(data_dir: Path) -> None:  # noqa: F811
    day_after = (T0 + timedelta(days=1)).isoformat()
    fresh = runner.invoke(retention_app, ["report", "--json", "--now", day_after])
    assert fresh.exit_code == 0, fresh.output
    report = json.loads(fresh.output)
    (cam,) = report["cameras"]
    assert (cam["camera"], cam["stored_segments"], cam["overdue_segments"]) == ("cam-a", 2, 0)
    assert report["ok"] is True and report["last_purge"] is None

    late = runner.invoke(retention_app, ["report", "--now", (T0 + timedelta(days=100)).isoformat()])
    assert late.exit_code == 1, late.output
    assert "OVERDUE 2 segment(s)" in late.output
    assert "cam-a (tokyo-1) policy pci 90 d" in late.output

    naive = runner.invoke(retention_app, ["report", "--now", "2026-11-29T01:00:00"])
    assert naive.exit_code == 2
    assert "timezone" in naive.output


def test_set_policy_changes_days_and_is_logged(data_dir: Path) -> None:  # noqa: F811
    ok = runner.invoke(
        retention_app,
        ["set-policy", "pci", "--days", "180", "--reason", "PCI scope review 2026", "--json"],
    )
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.output)
    assert (result["old_days"], result["new_days"], result["segments"]) == (90, 180, 2)
    assert result["locks"]["extended"] == 2 and result["locks"]["failed"] == 0

    ctx = open_vault(Settings(data_dir=data_dir))
    with unit_of_work(ctx.engine) as session:
        segments = list(session.exec(select(Segment)))
        (event,) = session.exec(select(AuditEvent).where(AuditEvent.action == "retention.change"))
    assert all(s.retention_until == s.end + timedelta(days=180) for s in segments)
    assert event.actor.startswith("cli:") and event.reason == "PCI scope review 2026"
    for segment in segments:
        info = ctx.store.head(segment.object_key)
        assert info is not None and info.retain_until == segment.retention_until


def test_set_policy_below_minimum_is_refused_and_changes_nothing(
    data_dir: Path,  # noqa: F811
) -> None:
    bad = runner.invoke(
        retention_app, ["set-policy", "pci", "--days", "30", "--reason", "PCI scope review 2026"]
    )
    assert bad.exit_code == 2
    assert "below the minimum" in bad.output
    ctx = open_vault(Settings(data_dir=data_dir))
    with unit_of_work(ctx.engine) as session:
        policy = session.get(RetentionPolicy, "pci")
        assert policy is not None and policy.days == 90
        assert list(session.exec(
            select(AuditEvent).where(AuditEvent.action == "retention.change")
        )) == []


def test_sync_store_applies_what_a_crash_left_undone(data_dir: Path) -> None:  # noqa: F811
    ctx = open_vault(Settings(data_dir=data_dir))
    with unit_of_work(ctx.engine) as session:  # the hold's row committed, its sync never ran
        apply_change(session, plan_placement(
            session, kind="legal", cameras=["cam-a"], start=T0, end=T0 + timedelta(minutes=1),
            reason="preservation letter from counsel", placed_by="legal-1", now=T0,
        ))
        segments = list(session.exec(select(Segment).order_by(col(Segment.start))))
    result = runner.invoke(retention_app, ["sync-store", "--json"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["legal_holds"]["held"] == 1  # the first segment (it has no thumbnail)
    assert outcome["locks"]["failed"] == 0
    held = [ctx.store.head(s.object_key) for s in segments]
    assert [info.legal_hold if info else None for info in held] == [True, False]
