"""``cctv-vault scheduler``: the nightly purge, ledger checkpoints, the integrity sweep, expiry.

Registered in :mod:`cctv_vault.cli` as ``app.command()(scheduler)``. Run as many as you like:
one holds the singleton lease and runs the jobs, the others wait and take over when it dies
(docs/design/scheduler.md). Exit codes: 0 stopped by SIGINT/SIGTERM or ``--duration``, 2 could
not start (bad settings, catalog or store unavailable).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from cctv_vault.runtime import open_vault
from scheduler.runner import SchedulePlan, SchedulerService
from vault.errors import VaultError
from vault.settings import Settings

__all__ = ["scheduler"]

log = logging.getLogger("cctv_vault")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        _fail(f"invalid setting CCTV_{where.upper()}: {first['msg']}")


def scheduler(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until ^C)")
    ] = None,
) -> None:
    """Run the scheduled jobs: purge, ledger checkpoints, integrity sweep, expiry (singleton)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # APScheduler says "Running job ..." at INFO for every run; our jobs log their decisions.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    settings = _settings()
    try:
        SchedulePlan.from_settings(settings)  # a bad zone or cron stops here, before any I/O
        ctx = open_vault(settings)
        service = SchedulerService.from_settings(ctx, settings)
    except VaultError as exc:
        _fail(exc.message)
    stop = threading.Event()

    def _signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)
    timer = None
    if duration is not None:
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
    log.info("scheduler %s starting (lease: %s)", service.instance, service.lease.description)
    try:
        service.run(stop)
    finally:
        if timer is not None:
            timer.cancel()
        ctx.engine.dispose()
