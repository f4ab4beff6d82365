"""The ``cctv-vault`` command: metadata listing, camera health, check exit codes, bad input."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cctv_vault.cli import app
from cctv_vault.runtime import open_vault
from tests.integration.test_lifecycle import CONFIG
from vault.catalog import record_status, sync_config
from vault.config import parse_config
from vault.db import unit_of_work
from vault.lifecycle import commit_segment
from vault.pending import PendingSegment
from vault.settings import Settings

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("CCTV_DATA_DIR", str(data))
    ctx = open_vault(Settings(data_dir=data))
    with unit_of_work(ctx.engine) as session:
        sync_config(session, parse_config(CONFIG), {"cam-a": "rtsp://10.0.0.5/stream1"})
        record_status(session, "cam-a", "recording", "", T0, T0 + timedelta(minutes=2))
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(2):
        start = T0 + timedelta(minutes=i)
        pending = PendingSegment(
            segment_id=str(uuid.uuid4()), camera_id="cam-a", run_id="run-1",
            run_started_at=T0, restamped=False, start=start, state="closed",
            end=start + timedelta(minutes=1), media_duration=60.0, frames=900, codec="h264",
            width=640, height=360,
        )
        pending.media_path(spool).write_bytes(f"segment {i}".encode() * 1000)
        pending.save(spool)
        commit_segment(ctx, pending, spool)
    return data


def test_segments_list_prints_metadata_json_lines(data_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["segments", "list", "--camera", "cam-a", "--from", "2026-11-29T10:00:30+09:00",
         "--to", "2026-11-29T01:01:00Z", "--json"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 1  # [01:00:30, 01:01:00) overlaps only the first segment
    assert set(lines[0]) == {
        "id", "camera", "start", "end", "bytes", "sha256", "codec", "retention_until",
        "purpose", "state",
    }
    assert lines[0]["purpose"] == "security"
    assert lines[0]["start"] == "2026-11-29T01:00:00+00:00"
    assert lines[0]["retention_until"] == "2027-02-27T01:01:00+00:00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-11-29T01:00:00", "--to", "2026-11-29T02:00:00Z"], "--from must carry"),
        (["--from", "2026-11-29T03:00:00Z", "--to", "2026-11-29T02:00:00Z"], "before start"),
        (["--from", "soon", "--to", "2026-11-29T02:00:00Z"], "not an ISO 8601"),
    ],
)
def test_segments_list_refuses_bad_times(data_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["segments", "list", "--camera", "cam-a", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cameras_status_and_check(data_dir: Path) -> None:
    status = runner.invoke(app, ["cameras", "status", "--json"])
    assert status.exit_code == 0, status.output
    [camera] = [json.loads(line) for line in status.output.splitlines()]
    assert (camera["camera"], camera["state"], camera["site"]) == ("cam-a", "recording", "tokyo-1")

    ok = runner.invoke(app, ["check", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["decrypted"] == 2

    victim = next((data_dir / "store" / "objects" / "segments").rglob("*-*-*-*-*"))
    victim.chmod(0o600)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    bad = runner.invoke(app, ["check"])
    assert bad.exit_code == 1
    assert "VIOLATION integrity" in bad.output


def test_unknown_setting_is_refused(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCTV_STORE", "tape")
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2
    assert "CCTV_STORE" in result.output
