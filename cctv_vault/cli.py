"""The ``cctv-vault`` command: the composition root (the only module importing every role)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import col, select

from cctv_vault.cli_audit import audit_app
from cctv_vault.cli_common import fail, load_settings
from cctv_vault.cli_purge import purge_app
from cctv_vault.cli_retention import retention_app
from cctv_vault.cli_scheduler import scheduler
from cctv_vault.cli_users import users_app
from cctv_vault.runtime import (
    IngestService,
    build_api,
    default_demo_config,
    ensure_demo_users,
    open_vault,
)
from scheduler.runner import SchedulerService
from vault.catalog import gaps_in_range, segments_in_range
from vault.check import run_check
from vault.config import load_config
from vault.db import unit_of_work
from vault.errors import VaultError
from vault.models import Camera, CameraStatus
from vault.timerange import TimeRange, parse_instant

if TYPE_CHECKING:  # the web stack is imported by the commands that serve, not by ingest & co.
    from fastapi import FastAPI

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CCTV footage vault")
segments_app = typer.Typer(no_args_is_help=True, help="Segment metadata (never footage)")
cameras_app = typer.Typer(no_args_is_help=True, help="Cameras and their health")
app.add_typer(segments_app, name="segments")
app.add_typer(cameras_app, name="cameras")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(purge_app, name="purge")
app.add_typer(retention_app, name="retention")
app.command(name="scheduler")(scheduler)

log = logging.getLogger("cctv_vault")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Deployment TOML")]


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # libav's own chatter goes through Python logging in PyAV; keep only errors.
    logging.getLogger("libav").setLevel(logging.ERROR)
    # One INFO line per job run is noise; our jobs log their own outcome.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)






def _record(config_path: Path, duration: float | None, *, all_roles: bool = False) -> None:
    """Recording alone (``ingest``), or every role in this process (``up``): recording, the
    scheduler (purge, checkpoints, sweep, expiry; waits for its lease) and the access API."""
    _setup_logging()
    settings = load_settings()
    try:
        config = load_config(config_path)
        ctx = open_vault(settings)
        service = IngestService(ctx, config, settings)
        jobs = SchedulerService.from_settings(ctx, settings) if all_roles else None
        service.start()
    except VaultError as exc:
        fail(exc.message)
    try:
        if jobs is not None:
            with jobs:
                credentials = ensure_demo_users(ctx, settings)
                if credentials is not None:
                    log.info("demo users and their passwords are in %s", credentials)
                api, _writer = build_api(settings, ctx)
                _serve(api, settings.api_host, settings.api_port, duration)
        else:
            service.wait(duration)
    finally:
        service.stop()
    typer.echo(
        f"stopped: {service.committer.committed} segment(s) committed this run", err=True
    )


def _serve(api: FastAPI, host: str, port: int, duration: float | None) -> None:
    """Serve ``api`` until SIGINT/SIGTERM (uvicorn's handlers) or ``duration`` seconds."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="info"))
    timer = None
    if duration is not None:
        timer = threading.Timer(duration, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    log.info("access API on http://%s:%d (OpenAPI at /docs)", host, port)
    try:
        server.run()
    finally:
        if timer is not None:
            timer.cancel()


@app.command()
def up(
    config: ConfigOpt = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until ^C)")
    ] = None,
) -> None:
    """Run every role in one process on the embedded default: recording, the scheduler and
    the access API."""
    _record(config or default_demo_config(), duration, all_roles=True)


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Listen address (CCTV_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (CCTV_API_PORT)")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
) -> None:
    """Serve the access API (stateless: run as many replicas as needed)."""
    _setup_logging()
    settings = load_settings()
    host = host or settings.api_host
    port = port or settings.api_port
    try:
        open_vault(settings)  # migrate and check the store once, before workers start
    except VaultError as exc:
        fail(exc.message)
    log.info("access API on http://%s:%d with %d worker(s)", host, port, workers)
    import uvicorn

    uvicorn.run(
        "cctv_vault.runtime:api_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


@app.command()
def ingest(
    config: Annotated[Path, typer.Option("--config", "-c", help="Deployment TOML")],
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """Record the configured cameras into the vault."""
    _record(config, duration)


@app.command()
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Skip decrypting and re-hashing")] = False,
) -> None:
    """Verify that catalog and object store agree (I6). Exit 1 on any violation."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        from ingest.spool import Spool

        pending = Spool(settings.resolved_spool_dir, settings.spool_max_bytes).pending_ids()
        report = run_check(ctx, quick=quick, pending_ids=pending)
    except VaultError as exc:
        fail(exc.message)
    if as_json:
        typer.echo(report.to_json())
    else:
        typer.echo(
            f"segments checked: {report.segments_checked}, decrypted: {report.decrypted}, "
            f"objects listed: {report.objects_listed}, pending in spool: {len(report.pending)}"
        )
        for v in report.violations:
            typer.echo(f"VIOLATION {v.kind} {v.target}: {v.detail}")
        typer.echo("OK" if report.ok else f"{len(report.violations)} violation(s)")
    raise typer.Exit(0 if report.ok else 1)


@segments_app.command("list")
def segments_list(
    camera: Annotated[str, typer.Option(help="Camera id")],
    start: Annotated[str, typer.Option("--from", help="ISO instant with offset")],
    end: Annotated[str, typer.Option("--to", help="ISO instant with offset")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
    gaps: Annotated[bool, typer.Option("--gaps", help="Also list gaps")] = False,
) -> None:
    """List segment metadata of one camera in [from, to)."""
    settings = load_settings()
    try:
        window = TimeRange(parse_instant(start, field="--from"), parse_instant(end, field="--to"))
        ctx = open_vault(settings)
        with unit_of_work(ctx.engine) as session:
            rows = segments_in_range(session, camera, window)
            gap_rows = gaps_in_range(session, camera, window) if gaps else []
    except VaultError as exc:
        fail(exc.message)
    for seg in rows:
        record = {
            "id": seg.id,
            "camera": seg.camera_id,
            "start": seg.start.isoformat(),
            "end": seg.end.isoformat(),
            "bytes": seg.bytes,
            "sha256": seg.sha256,
            "codec": seg.codec,
            "retention_until": seg.retention_until.isoformat(),
            "purpose": seg.purpose,
            "state": seg.state,
        }
        if as_json:
            typer.echo(json.dumps(record))
        else:
            typer.echo(
                f"{seg.start.isoformat()}  {seg.end.isoformat()}  {seg.bytes:>10}  "
                f"{seg.codec:5}  {seg.id}"
            )
    for gap in gap_rows:
        record = {
            "gap": True,
            "camera": gap.camera_id,
            "start": gap.start.isoformat(),
            "end": gap.end.isoformat(),
            "reason": gap.reason,
        }
        typer.echo(json.dumps(record) if as_json else f"GAP {record['start']} {record['end']} "
                   f"{gap.reason}")


@cameras_app.command("status")
def cameras_status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Health of every camera as last reported by its recorder."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        with unit_of_work(ctx.engine) as session:
            cams = list(session.exec(select(Camera).order_by(col(Camera.id))))
            statuses = {s.camera_id: s for s in session.exec(select(CameraStatus))}
    except VaultError as exc:
        fail(exc.message)
    for cam in cams:
        st = statuses.get(cam.id)
        record = {
            "camera": cam.id,
            "site": cam.site_id,
            "enabled": cam.enabled,
            "state": st.state if st else "unknown",
            "detail": st.detail if st else "",
            "updated_at": st.updated_at.isoformat() if st else None,
            "last_segment_end": (
                st.last_segment_end.isoformat() if st and st.last_segment_end else None
            ),
        }
        if as_json:
            typer.echo(json.dumps(record))
        else:
            typer.echo(
                f"{cam.id:20} {cam.site_id:10} {record['state']:12} "
                f"last={record['last_segment_end']} {record['detail']}"
            )


def main() -> None:
    app()
