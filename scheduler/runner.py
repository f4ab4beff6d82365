"""The scheduler process: APScheduler 3.x in one process, behind the singleton lease.

Lifecycle of a :class:`SchedulerService` (see docs/design/scheduler.md):

1. Poll for the lease (:mod:`scheduler.lease`) every ``lease_poll`` seconds until it is ours.
2. Decide from the catalog what a previous holder owes: a purge is owed when the purge cron
   fired (its last scheduled instant, in the configured time zone) after the ``as_of`` of the
   last completed purge run; likewise the sweep against the last ``integrity.sweep`` event.
   APScheduler's memory job store cannot know this across a restart; the catalog can.
3. Start a ``BackgroundScheduler`` with a memory job store and one-process defaults
   (``coalesce=True``, ``max_instances=1``, a misfire grace of hours). Owed jobs, the ledger
   checkpoint and the expiry get ``next_run_time=now``: they run once at once.
4. Check the lease every ``lease_poll`` seconds (and before every job). A lost lease stops the
   jobs: the scheduler is shut down, and the service goes back to step 1.
5. On stop, shut the scheduler down (waiting for a running job) and release the lease.

Whatever the reason a scheduler stops holding the lease, the next holder repeats step 2, so a
purge that a dead holder owed is run once by its successor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.date import DateTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy import func
from sqlmodel import col, select

from scheduler import jobs
from scheduler.lease import Lease, lease_for
from scheduler.triggers import cron_trigger, owed, previous_fire_time, resolve_timezone
from vault.db import unit_of_work
from vault.errors import VaultError
from vault.ledger import EventDraft, LedgerWriter
from vault.lifecycle import VaultContext
from vault.models import AuditEvent, PurgeRun
from vault.purge import RunState
from vault.settings import Settings
from vault.signing import SigningKey
from vault.timerange import as_utc, utcnow

__all__ = ["LEASE_ACQUIRED_ACTION", "SchedulePlan", "SchedulerService"]

log = logging.getLogger(__name__)

LEASE_ACQUIRED_ACTION = "scheduler.lease.acquired"
LEASE_RELEASED_ACTION = "scheduler.lease.released"
LEASE_LOST_ACTION = "scheduler.lease.lost"
JOB_FAILED_ACTION = "scheduler.job.failed"
# A purge that failed (store or catalog down) is tried again this much later, not only the next
# night: I5 wants footage gone within 24 hours of its deadline.
PURGE_RETRY = timedelta(minutes=15)


@dataclass(frozen=True)
class SchedulePlan:
    """When each job runs; built from :class:`Settings`, validated once at start."""

    timezone: ZoneInfo
    purge_cron: str
    sweep_cron: str
    checkpoint_every: timedelta
    expiry_every: timedelta
    sweep_sample: int
    misfire_grace: timedelta
    lease_poll_s: float

    def __post_init__(self) -> None:
        # Fail at start, not at 02:30: both expressions must be readable in the zone.
        self.purge_trigger()
        self.sweep_trigger()

    @classmethod
    def from_settings(cls, settings: Settings) -> SchedulePlan:
        """:class:`vault.errors.ConfigError` for an unknown zone or an unreadable cron."""
        return cls(
            timezone=resolve_timezone(settings.scheduler_timezone),
            purge_cron=settings.scheduler_purge_cron,
            sweep_cron=settings.scheduler_sweep_cron,
            checkpoint_every=timedelta(minutes=settings.scheduler_checkpoint_minutes),
            expiry_every=timedelta(minutes=settings.scheduler_expiry_minutes),
            sweep_sample=settings.scheduler_sweep_sample,
            misfire_grace=timedelta(hours=settings.scheduler_misfire_grace_hours),
            lease_poll_s=settings.scheduler_lease_poll_seconds,
        )

    def purge_trigger(self) -> Any:
        return cron_trigger(self.purge_cron, self.timezone)

    def sweep_trigger(self) -> Any:
        return cron_trigger(self.sweep_cron, self.timezone)


@dataclass(frozen=True, slots=True)
class Owed:
    """What the catch-up decision found at lease acquisition (also recorded in the ledger)."""

    purge: bool
    last_scheduled_purge: datetime | None
    last_purge_as_of: datetime | None
    sweep: bool
    last_scheduled_sweep: datetime | None
    last_sweep_at: datetime | None


def last_purge_as_of(ctx: VaultContext) -> datetime | None:
    """The latest instant a completed purge run covered ("everything due as of")."""
    with unit_of_work(ctx.engine) as session:
        value = session.exec(
            select(func.max(col(PurgeRun.as_of))).where(PurgeRun.state == RunState.DONE)
        ).first()
    return None if value is None else as_utc(value)


def last_sweep_at(ctx: VaultContext) -> datetime | None:
    with unit_of_work(ctx.engine) as session:
        value = session.exec(
            select(AuditEvent.at)
            .where(AuditEvent.action == jobs.SWEEP_ACTION)
            .order_by(col(AuditEvent.seq).desc())
            .limit(1)
        ).first()
    return None if value is None else as_utc(value)


def decide_owed(ctx: VaultContext, plan: SchedulePlan, now: datetime) -> Owed:
    """Which cron jobs a scheduler that was down (or a dead holder) owes, as of ``now``."""
    scheduled_purge = previous_fire_time(plan.purge_trigger(), now)
    purge_as_of = last_purge_as_of(ctx)
    scheduled_sweep = previous_fire_time(plan.sweep_trigger(), now)
    sweep_at = last_sweep_at(ctx)
    return Owed(
        purge=owed(scheduled_purge, purge_as_of),
        last_scheduled_purge=scheduled_purge,
        last_purge_as_of=purge_as_of,
        sweep=owed(scheduled_sweep, sweep_at),
        last_scheduled_sweep=scheduled_sweep,
        last_sweep_at=sweep_at,
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class SchedulerService:
    """One scheduler: waits for the lease, then runs the jobs until stopped or the lease is lost.

    ``run(stop)`` blocks (the ``cctv-vault scheduler`` command); ``start()``/``stop()``, or
    ``with service:``, run it on a thread of its own (inside ``cctv-vault up``).
    """

    def __init__(
        self,
        ctx: VaultContext,
        plan: SchedulePlan,
        lease: Lease,
        signing_key: SigningKey,
        *,
        instance: str | None = None,
        ledger_timeout_s: float = 30.0,
    ) -> None:
        self.ctx = ctx
        self.plan = plan
        self.lease = lease
        self.signing_key = signing_key
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self._ledger_timeout_s = ledger_timeout_s
        self._writer: LedgerWriter | None = None
        self._scheduler: Any = None
        self._purge_lock = threading.Lock()
        self._lease_lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holding = threading.Event()  # set while this service holds the lease and runs jobs

    @classmethod
    def from_settings(cls, ctx: VaultContext, settings: Settings) -> SchedulerService:
        """The service ``cctv-vault scheduler`` and ``cctv-vault up`` run (ConfigError early)."""
        return cls(
            ctx,
            SchedulePlan.from_settings(settings),
            lease_for(ctx.engine, settings.data_dir),
            SigningKey.load_or_create(settings.resolved_ledger_key_file),
        )

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread (for ``cctv-vault up``)."""
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="scheduler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background thread: waits for a running job, then releases the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SchedulerService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def run(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set: wait for the lease, hold it and run jobs, repeat."""
        self._writer = LedgerWriter(self.ctx.engine, write_timeout_s=self._ledger_timeout_s)
        waiting_said = False
        try:
            while not stop.is_set():
                try:
                    acquired = self.lease.try_acquire()
                except (OSError, VaultError) as exc:
                    log.warning("scheduler lease could not be tried: %s", exc)
                    acquired = False
                if not acquired:
                    if not waiting_said:
                        log.info(
                            "scheduler %s: another scheduler holds the lease (%s); waiting",
                            self.instance,
                            self.lease.description,
                        )
                        waiting_said = True
                    stop.wait(self.plan.lease_poll_s)
                    continue
                waiting_said = False
                broke = False
                try:
                    self._hold(stop)
                except Exception:
                    # Whatever broke (the catalog mid-start, a driver error), give the lease
                    # up and start over: another scheduler, or this one, takes it again.
                    log.exception("scheduler %s failed while holding the lease", self.instance)
                    broke = True
                finally:
                    self.lease.release()
                if broke:
                    stop.wait(self.plan.lease_poll_s)
        finally:
            self._writer.close()
            self._writer = None

    def _hold(self, stop: threading.Event) -> None:
        """Holding the lease: schedule the jobs, then watch the lease until stop or loss."""
        self._lease_lost.clear()
        try:
            due = decide_owed(self.ctx, self.plan, self.ctx.clock.now())
        except VaultError as exc:
            # Cannot read the catalog: run the purge anyway; it is idempotent, and if the
            # catalog is really gone it fails and is retried.
            log.warning("scheduler: catch-up decision failed (%s); purging at once", exc.message)
            due = Owed(True, None, None, False, None, None)
        log.info(
            "scheduler %s took the lease (%s); purge owed=%s (scheduled %s, last run as of %s);"
            " sweep owed=%s; timezone %s",
            self.instance,
            self.lease.description,
            due.purge,
            _iso(due.last_scheduled_purge),
            _iso(due.last_purge_as_of),
            due.sweep,
            self.plan.timezone.key,
        )
        self._audit(
            LEASE_ACQUIRED_ACTION,
            "scheduler",
            "done",
            details={
                "instance": self.instance,
                "lease": self.lease.description,
                "timezone": self.plan.timezone.key,
                "purge_cron": self.plan.purge_cron,
                "purge_owed": due.purge,
                "last_scheduled_purge": _iso(due.last_scheduled_purge),
                "last_purge_as_of": _iso(due.last_purge_as_of),
                "sweep_owed": due.sweep,
            },
        )
        scheduler = self._build(due)
        self._scheduler = scheduler
        scheduler.start()
        self.holding.set()
        lost = False
        try:
            while not stop.wait(self.plan.lease_poll_s):
                if self._lease_lost.is_set() or not self.lease.held():
                    lost = True
                    break
        finally:
            self.holding.clear()
            # Stop starting jobs at once; a running job (a purge batch) finishes its step.
            scheduler.shutdown(wait=True)
            self._scheduler = None
        if lost:
            log.error("scheduler %s lost the lease: jobs stopped; waiting for it", self.instance)
            self._audit(
                LEASE_LOST_ACTION, "scheduler", "failed", details={"instance": self.instance}
            )
        else:
            log.info("scheduler %s stopping: lease released", self.instance)
            self._audit(
                LEASE_RELEASED_ACTION, "scheduler", "done", details={"instance": self.instance}
            )

    def _build(self, due: Owed) -> Any:
        plan = self.plan
        scheduler = BackgroundScheduler(
            timezone=plan.timezone,
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(plan.misfire_grace.total_seconds()),
            },
        )
        now = utcnow()  # APScheduler's own time base is the wall clock
        at_once: dict[str, Any] = {"next_run_time": now}
        scheduler.add_job(
            self._guarded("purge", self._purge),
            plan.purge_trigger(),
            id="purge",
            name="nightly purge",
            **(at_once if due.purge else {}),
        )
        scheduler.add_job(
            self._guarded("checkpoint", self._checkpoint),
            IntervalTrigger(seconds=plan.checkpoint_every.total_seconds(), timezone=plan.timezone),
            id="checkpoint",
            name="ledger checkpoint",
            **at_once,
        )
        scheduler.add_job(
            self._guarded("sweep", self._sweep),
            plan.sweep_trigger(),
            id="sweep",
            name="integrity sweep",
            **(at_once if due.sweep else {}),
        )
        scheduler.add_job(
            self._guarded("expiry", self._expiry),
            IntervalTrigger(seconds=plan.expiry_every.total_seconds(), timezone=plan.timezone),
            id="expiry",
            name="expiry of grants and security holds",
            **at_once,
        )
        return scheduler

    # -- jobs ----------------------------------------------------------------------------------

    def _guarded(self, name: str, body: Callable[[], None]) -> Callable[[], None]:
        """Run ``body`` only while the lease is ours; a failure is logged, audited, survived."""

        def job() -> None:
            if self._lease_lost.is_set() or not self.lease.held():
                self._lease_lost.set()
                log.error("scheduler job %s not started: the lease is lost", name)
                return
            try:
                body()
            except Exception as exc:
                reason = exc.message if isinstance(exc, VaultError) else type(exc).__name__
                log.exception("scheduler job %s failed: %s", name, reason)
                self._audit(
                    JOB_FAILED_ACTION,
                    f"job:{name}",
                    "failed",
                    reason=reason,
                    details={"instance": self.instance},
                )
                if name == "purge":
                    self._retry_purge()

        return job

    def _purge(self) -> None:
        # The catch-up, the nightly cron and a retry are separate APScheduler runs: never two
        # purges at once in this process either.
        if not self._purge_lock.acquire(blocking=False):
            log.warning("purge already running in this scheduler; this run is skipped")
            return
        try:
            report = jobs.nightly_purge(
                self.ctx, signing_key=self.signing_key, audit=self._sink()
            )
        finally:
            self._purge_lock.release()
        log.info(
            "scheduled purge run=%s state=%s purged=%d held_back=%d refused=%d",
            report.run_id,
            report.state,
            report.purged,
            report.held_back,
            len(report.failed),
        )
        if report.failed:
            # The store refused objects the catalog says may go (a lock or legal hold set
            # outside the vault): retrying will not change its mind; a person must look.
            log.warning("purge run=%s: the store refused %d segment(s)", report.run_id,
                        len(report.failed))

    def _retry_purge(self) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return
        at = utcnow() + PURGE_RETRY
        log.warning("purge will be tried again at %s", at.isoformat())
        scheduler.add_job(
            self._guarded("purge", self._purge),
            DateTrigger(run_date=at, timezone=self.plan.timezone),
            id="purge-retry",
            name="purge retry",
            replace_existing=True,
        )

    def _checkpoint(self) -> None:
        jobs.ledger_checkpoint(self.ctx, signing_key=self.signing_key, audit=self._sink())

    def _sweep(self) -> None:
        jobs.integrity_sweep(self.ctx, sample=self.plan.sweep_sample, audit=self._sink())

    def _expiry(self) -> None:
        jobs.expire_grants_and_holds(self.ctx, audit=self._sink())

    # -- ledger --------------------------------------------------------------------------------

    def _sink(self) -> LedgerWriter:
        if self._writer is None:
            raise RuntimeError("the scheduler's ledger writer is closed")
        return self._writer

    def _audit(
        self,
        action: str,
        target: str,
        decision: str,
        *,
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Best effort: the scheduler's own comings and goings must not stop it (the jobs'
        events are not best effort: a job whose event cannot be written fails)."""
        try:
            self._sink().write_many(
                [
                    EventDraft(
                        at=self.ctx.clock.now(),
                        actor=jobs.ACTOR,
                        role=jobs.ROLE,
                        action=action,
                        target=target,
                        decision=decision,
                        reason=reason[:1000],
                        details=details or {},
                    )
                ]
            )
        except VaultError as exc:
            log.warning("scheduler could not record %s in the ledger: %s", action, exc.message)
