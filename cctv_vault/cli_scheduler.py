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
from typing import Annotated

import typer

from cctv_vault.cli_common import fail, load_settings
from cctv_vault.runtime import open_vault
from scheduler.runner import SchedulePlan, SchedulerService
from vault.errors import VaultError

__all__ = ["scheduler"]

log = logging.getLogger("cctv_vault")






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
    settings = load_settings()
    try:
        SchedulePlan.from_settings(settings)  # a bad zone or cron stops here, before any I/O
        ctx = open_vault(settings)
        service = SchedulerService.from_settings(ctx, settings)
    except VaultError as exc:
        fail(exc.message)
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
