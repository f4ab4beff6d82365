"""``cctv-vault audit``: exit codes and the first bad sequence number, on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from cctv_vault.cli_audit import audit_app
from cctv_vault.runtime import open_vault
from tests.unit.test_ledger import draft
from vault.ledger import LedgerWriter
from vault.models import AuditEvent
from vault.settings import Settings
from vault.signing import SigningKey

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("CCTV_DATA_DIR", str(data))
    return data


def append_events(data_dir: Path, n: int) -> None:
    ctx = open_vault(Settings(data_dir=data_dir))
    with LedgerWriter(ctx.engine, batch_wait_s=0) as writer:
        writer.write_many([draft(i) for i in range(n)])
    ctx.engine.dispose()


def test_verify_empty_ledger_is_ok(data_dir: Path) -> None:
    result = runner.invoke(audit_app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout


def test_checkpoint_then_verify(data_dir: Path) -> None:
    append_events(data_dir, 5)
    result = runner.invoke(audit_app, ["checkpoint"])
    assert result.exit_code == 0, result.output
    assert "checkpoint seq=5" in result.stdout
    assert "ledger/checkpoints/000000000005.json" in result.stdout
    again = runner.invoke(audit_app, ["checkpoint"])
    assert again.exit_code == 0 and "nothing to checkpoint" in again.stdout
    result = runner.invoke(audit_app, ["verify", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert (report["events"], report["checkpoints"], report["first_bad_seq"]) == (5, 1, None)


def test_verify_names_the_first_bad_sequence_number(data_dir: Path) -> None:
    append_events(data_dir, 5)
    assert runner.invoke(audit_app, ["checkpoint"]).exit_code == 0
    ctx = open_vault(Settings(data_dir=data_dir))
    with ctx.engine.begin() as conn:
        conn.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(reason="rewritten"))
    ctx.engine.dispose()
    result = runner.invoke(audit_app, ["verify"])
    assert result.exit_code == 1, result.output
    assert "FAIL first bad sequence number: 3 (altered" in result.stdout
    result = runner.invoke(audit_app, ["verify", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["first_bad_seq"] == 3
    assert [p["kind"] for p in report["problems"]] == ["altered"]


def test_verify_with_an_auditors_public_key(data_dir: Path, tmp_path: Path) -> None:
    append_events(data_dir, 2)
    assert runner.invoke(audit_app, ["checkpoint"]).exit_code == 0
    exported = runner.invoke(audit_app, ["public-key"])
    assert exported.exit_code == 0 and exported.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    trusted = tmp_path / "ledger.pub"
    trusted.write_text(exported.stdout)
    result = runner.invoke(audit_app, ["verify", "--public-key", str(trusted)])
    assert result.exit_code == 0, result.output
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(SigningKey.load_or_create(tmp_path / "stranger.pem").public_pem())
    result = runner.invoke(audit_app, ["verify", "--public-key", str(stranger)])
    assert result.exit_code == 1
    assert "checkpoint-unknown-key" in result.stdout


def test_unreadable_public_key_and_bad_settings_exit_2(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    result = runner.invoke(audit_app, ["verify", "--public-key", str(junk)])
    assert result.exit_code == 2
    assert "cannot read public key" in result.output
    monkeypatch.setenv("CCTV_LEDGER_BATCH_MAX", "0")
    result = runner.invoke(audit_app, ["verify"])
    assert result.exit_code == 2
    assert "invalid setting CCTV_LEDGER_BATCH_MAX" in result.output
