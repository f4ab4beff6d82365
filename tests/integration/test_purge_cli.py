"""``cctv-vault purge``, through the Typer app object, on a real data dir (SQLite, filesystem).

The CLI runs on the system clock; footage recorded about 120 days ago has a 90-day retention
that ended a month ago.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from cctv_vault.cli_purge import purge_app
from cctv_vault.runtime import open_vault
from tests.integration.test_purge import CONFIG, MIN, T0, add_hold, record
from vault.catalog import sync_config
from vault.config import parse_config
from vault.db import unit_of_work
from vault.lifecycle import VaultContext
from vault.models import AuditEvent, PurgeRun, Segment, Tombstone
from vault.settings import Settings
from vault.signing import SigningKey

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("CCTV_DATA_DIR", str(data))
    for name in ("CCTV_DATABASE_URL", "CCTV_STORE", "CCTV_LEDGER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return data


@pytest.fixture
def ctx(data_dir: Path, tmp_path: Path) -> VaultContext:
    vault = open_vault(Settings(data_dir=data_dir))
    with unit_of_work(vault.engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
    spool = tmp_path / "spool"
    spool.mkdir()
    record(vault, spool, "cam-a", T0, 3)
    record(vault, spool, "cam-b", T0, 2, thumb=False)
    return vault


def counts(ctx: VaultContext) -> tuple[int, int, int, list[str]]:
    with unit_of_work(ctx.engine) as session:
        return (
            len(list(session.exec(select(PurgeRun)))),
            len(list(session.exec(select(Tombstone)))),
            len(list(session.exec(select(AuditEvent)))),
            sorted(s.state for s in session.exec(select(Segment))),
        )


def test_dry_run_prints_per_camera_and_holds_and_changes_nothing(ctx: VaultContext) -> None:
    hold_id = add_hold(ctx, ["cam-b"], T0, T0 + MIN)
    before = counts(ctx)
    result = runner.invoke(purge_app, ["--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dry run as of" in out and "nothing is changed" in out
    assert "cam-a: 3 segment(s)" in out
    assert f"{T0.isoformat()} .. {(T0 + 3 * MIN).isoformat()} would go" in out
    assert "cam-b: 1 segment(s)" in out
    assert "total: 4 segment(s)" in out
    assert f"hold {hold_id} (legal): 1 segment(s)" in out and "[cam-b: 1]" in out
    assert counts(ctx) == before

    as_json = runner.invoke(purge_app, ["--dry-run", "--json"])
    report = json.loads(as_json.output)
    assert report["dry_run"] and report["run_id"] is None
    assert {c["camera"]: c["segments"] for c in report["cameras"]} == {"cam-a": 3, "cam-b": 1}
    assert counts(ctx) == before


def test_dry_run_may_look_ahead_a_real_run_may_not(ctx: VaultContext) -> None:
    early = (T0 + timedelta(days=1)).isoformat()  # before any retention ended
    result = runner.invoke(purge_app, ["--dry-run", "--now", early])
    assert result.exit_code == 0, result.output
    assert "total: 0 segment(s)" in result.output
    future = (datetime.now(T0.tzinfo) + timedelta(days=30)).isoformat()
    assert runner.invoke(purge_app, ["--dry-run", "--now", future]).exit_code == 0
    refused = runner.invoke(purge_app, ["--now", future])
    assert refused.exit_code == 2
    assert "after now" in refused.output
    naive = runner.invoke(purge_app, ["--now", "2026-08-01T00:00:00"])
    assert naive.exit_code == 2 and "timezone" in naive.output
    assert counts(ctx)[0] == 0


def test_purge_then_verify_the_certificate_by_run_and_by_file(
    ctx: VaultContext, data_dir: Path, tmp_path: Path
) -> None:
    result = runner.invoke(purge_app, [])
    assert result.exit_code == 0, result.output
    assert "total: 5 segment(s)" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("certificate: "))
    object_key = line.split()[1]
    run_id = object_key.rsplit("/", 1)[-1].removesuffix(".json")
    assert counts(ctx)[3] == ["purged"] * 5

    by_run = runner.invoke(purge_app, ["verify-certificate", run_id])
    assert by_run.exit_code == 0, by_run.output
    assert f"certificate of run {run_id} (done): 5 segment(s) purged" in by_run.output
    assert by_run.output.rstrip().endswith("OK")

    # Offline, the auditor's way: the file and the public key, nothing else.
    exported = tmp_path / "certificate.json"
    exported.write_bytes(ctx.store.get(object_key))
    public = tmp_path / "ledger.pub"
    public.write_bytes(
        SigningKey.load_or_create(data_dir / "keys" / "ledger.pem").public_pem()
    )
    by_file = runner.invoke(
        purge_app, ["verify-certificate", str(exported), "--public-key", str(public), "--json"]
    )
    assert by_file.exit_code == 0, by_file.output
    verdict = json.loads(by_file.output)
    assert verdict["ok"] and verdict["run_id"] == run_id and verdict["totals"]["purged"] == 5

    forged = json.loads(exported.read_bytes())
    forged["statement"]["segments"][0]["sha256"] = "f" * 64
    exported.write_text(json.dumps(forged))
    bad = runner.invoke(purge_app, ["verify-certificate", str(exported), "--public-key",
                                    str(public)])
    assert bad.exit_code == 1
    assert "signature does not verify" in bad.output and "FAIL" in bad.output

    other = tmp_path / "other.pub"
    other.write_bytes(SigningKey.load_or_create(tmp_path / "other.pem").public_pem())
    untrusted = runner.invoke(purge_app, ["verify-certificate", run_id, "--public-key",
                                          str(other)])
    assert untrusted.exit_code == 1 and "not a trusted key" in untrusted.output

    unknown = runner.invoke(purge_app, ["verify-certificate", str(uuid.uuid4())])
    assert unknown.exit_code == 2 and "not found" in unknown.output

    again = runner.invoke(purge_app, ["--json"])
    assert again.exit_code == 0
    assert json.loads(again.output)["purged"] == 0


def test_refused_deletes_exit_1_and_are_listed(ctx: VaultContext) -> None:
    with unit_of_work(ctx.engine) as session:
        first = sorted(session.exec(select(Segment)), key=lambda s: (s.retention_until, s.id))[0]
    ctx.store.set_legal_hold(first.object_key, True)
    result = runner.invoke(purge_app, [])
    assert result.exit_code == 1, result.output
    assert f"FAILED {first.id} {first.object_key}: under legal hold" in result.output
    assert "total: 4 segment(s)" in result.output
