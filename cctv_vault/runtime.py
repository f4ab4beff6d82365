"""Wiring: settings -> catalog, store, keys -> the running roles. The one place that knows all."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ingest.recorder import CameraRecorder, Committer, HealthBoard, source_ref
from ingest.segmenter import GapInfo
from ingest.spool import Spool
from vault import ledger
from vault.catalog import last_segment_end, sync_config
from vault.config import VaultConfig
from vault.crypto import LocalKeyProvider
from vault.db import make_engine, migrate, unit_of_work
from vault.ledger import AuditSink, LedgerWriter
from vault.lifecycle import VaultContext
from vault.settings import Settings
from vault.signing import SigningKey
from vault.store.factory import ensure_lock_enforcement, open_store
from vault.timerange import Clock, SystemClock

if TYPE_CHECKING:
    from fastapi import FastAPI

# The access API (FastAPI, its routes, auth and policy) is imported where the API is built, not
# here: an ingest process never serves it, and importing it cost ~0.3 CPU s at every start (P1).

__all__ = ["IngestService", "api_app_from_env", "build_api", "ensure_demo_users", "open_vault"]

log = logging.getLogger("cctv_vault")


def open_vault(settings: Settings, clock: Clock | None = None) -> VaultContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    store = open_store(settings)
    ensure_lock_enforcement(store, settings.s3_allow_unenforced_lock, log)
    keys = LocalKeyProvider(settings.resolved_key_file)
    return VaultContext(engine=engine, store=store, keys=keys, clock=clock or SystemClock())


@dataclass
class IngestService:
    """All cameras of one config, a spool and its committer, in one process."""

    ctx: VaultContext
    config: VaultConfig
    settings: Settings
    recorders: list[CameraRecorder] = field(default_factory=list)
    commit_retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        self.spool = Spool(self.settings.resolved_spool_dir, self.settings.spool_max_bytes)
        self.health = HealthBoard(self.ctx.clock)
        self.committer = Committer(
            self.ctx, self.spool, self.health, retry_high=self.commit_retry_max_s
        )
        self.stopped = threading.Event()

    def start(self) -> None:
        self.spool.acquire()
        with unit_of_work(self.ctx.engine) as session:
            sync_config(
                session,
                self.config,
                {c.id: source_ref(c) for c in self.config.cameras},
                at=self.ctx.clock.now(),
            )
        recovered = {r.camera_id: r.gap for r in self.spool.recover()}
        initial_gaps = self._initial_gaps(recovered)
        self.committer.start()
        cache = self.settings.data_dir / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        for camera in self.config.cameras:
            if not camera.enabled:
                continue
            recorder = CameraRecorder(
                camera,
                self.config.recording,
                self.config.segment_seconds(camera),
                self.spool,
                self.committer,
                self.health,
                self.ctx.clock,
                cache_dir=cache,
                initial_gap=initial_gaps.get(camera.id),
            )
            self.recorders.append(recorder)
            recorder.start()
        log.info(
            "ingest started: %d camera(s), spool %s, store %s",
            len(self.recorders),
            self.spool.root,
            self.ctx.store.name,
        )

    def _initial_gaps(self, recovered: dict[str, GapInfo]) -> dict[str, GapInfo]:
        """Where each camera's footage stopped before this process: its first run's gap.

        The newest end among the catalog, the spool and crash recovery; the reason says
        whether the last process was stopped in order or died.
        """
        reason = (
            "recorder interrupted (crash); in-flight fragment lost"
            if self.spool.crashed
            else "recorder not running"
        )
        ends: dict[str, datetime] = {}
        with unit_of_work(self.ctx.engine) as session:
            for camera in self.config.cameras:
                end = last_segment_end(session, camera.id)
                if end is not None:
                    ends[camera.id] = end
        for pending in self.spool.closed():
            known = ends.get(pending.camera_id)
            if pending.end is not None and (known is None or pending.end > known):
                ends[pending.camera_id] = pending.end
        gaps: dict[str, GapInfo] = {}
        for camera_id, end in ends.items():
            gaps[camera_id] = GapInfo(end, end, reason)
        for camera_id, gap in recovered.items():
            computed = gaps.get(camera_id)
            if computed is None or gap.start >= computed.start:
                gaps[camera_id] = GapInfo(gap.start, gap.start, gap.reason)
        return gaps

    def stop(self) -> None:
        for recorder in self.recorders:
            recorder.stop()
        for recorder in self.recorders:
            recorder.join(timeout=30)
        self.committer.stop()
        self.committer.join(timeout=30)
        try:
            self.committer.drain()
        except Exception as exc:  # footage stays in the spool for the next start
            log.warning("final commit deferred: %s", exc)
        if not any(r.is_alive() for r in self.recorders):
            self.spool.mark_clean()
        self.spool.release()
        self.stopped.set()

    def wait(self, duration: float | None) -> None:
        """Run until SIGINT/SIGTERM, ``duration`` seconds, or every file camera has ended."""
        done = threading.Event()

        def _signal(_signum: int, _frame: FrameType | None) -> None:
            done.set()

        signal.signal(signal.SIGINT, _signal)
        signal.signal(signal.SIGTERM, _signal)
        deadline = None if duration is None else self.ctx.clock.now().timestamp() + duration
        while not done.is_set():
            if deadline is not None and self.ctx.clock.now().timestamp() >= deadline:
                break
            if self.recorders and not any(r.is_alive() for r in self.recorders):
                break
            done.wait(0.5)


@contextmanager
def running(service: IngestService) -> Iterator[IngestService]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


def default_demo_config() -> Path:
    return Path(__file__).with_name("demo.toml")


DEMO_USERS = (
    ("demo-operator", "operator"),
    ("demo-supervisor", "supervisor"),
    ("demo-auditor", "auditor"),
)


def ensure_demo_users(ctx: VaultContext, settings: Settings) -> Path | None:
    """Demo only: create one user per everyday role with a random password, once.

    The passwords go to a 0600 file in the data dir, never to the log (I9). Outside the demo
    there are no default credentials: users are created with ``cctv-vault users add``.
    """
    if not settings.demo:
        return None
    from access_api.policy import ALL_SITES
    from access_api.principals import add_user, list_users

    path = settings.data_dir / "demo-credentials.txt"
    with unit_of_work(ctx.engine) as session:
        if list_users(session):
            return path if path.exists() else None
        lines = []
        for name, role in DEMO_USERS:
            password = secrets.token_urlsafe(12)
            add_user(session, name, [role], [ALL_SITES], ctx.clock.now(), password=password)
            lines.append(f"{name} {role} {password}\n")
            ledger.append(
                session, at=ctx.clock.now(), actor="system:demo", role="system",
                action="users.add", target=f"user:{name}", decision="done",
                details={"roles": [role], "sites": [ALL_SITES]},
            )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# demo users: name role password (demo only)\n" + "".join(lines))
    return path


def build_api(
    settings: Settings, ctx: VaultContext, sink: AuditSink | None = None
) -> tuple[FastAPI, LedgerWriter | None]:
    """The access API over ``ctx``. Its ledger writer (if we made it) is the caller's to close.

    ``sink`` exists for the P3 benchmark's comparison run only; production wiring always writes
    the durable ledger.
    """
    from access_api.app import create_app
    from access_api.audit import Auditor
    from access_api.auth.ratelimit import FailureWindow
    from access_api.auth.tokens import OidcConfig, TokenService
    from access_api.deps import ApiServices
    from access_api.policy import AccessPolicy
    from access_api.principals import LoginLimits

    writer: LedgerWriter | None = None
    if sink is None:
        writer = LedgerWriter(
            ctx.engine,
            batch_max=settings.ledger_batch_max,
            batch_wait_s=settings.ledger_batch_wait_ms / 1000,
            write_timeout_s=settings.ledger_write_timeout_s,
        )
        sink = writer
    oidc = None
    if settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks_url:
        oidc = OidcConfig(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            algorithms=tuple(settings.oidc_algorithms),
            name_claim=settings.oidc_name_claim,
            roles_claim=settings.oidc_roles_claim,
            sites_claim=settings.oidc_sites_claim,
        )
    window = timedelta(seconds=settings.login_window_seconds)
    services = ApiServices(
        ctx=ctx,
        auditor=Auditor(sink, ctx.clock),
        tokens=TokenService(
            SigningKey.load_or_create(settings.resolved_token_key_file),
            ctx.clock,
            ttl=timedelta(minutes=settings.token_ttl_minutes),
            oidc=oidc,
        ),
        policy=AccessPolicy(
            auto_grant_window=timedelta(hours=settings.auto_grant_window_hours),
            auto_grant_max_span=timedelta(minutes=settings.auto_grant_max_span_minutes),
            grant_ttl=timedelta(minutes=settings.grant_ttl_minutes),
        ),
        login_limits=LoginLimits(
            max_failures=settings.login_max_failures,
            lockout=timedelta(minutes=settings.login_lockout_minutes),
        ),
        client_failures=FailureWindow(settings.login_client_max_failures, window),
        # Per name: a little above the lockout threshold, so that guessing at names that do
        # not exist (no lockout there) is slowed down as much as guessing at real ones.
        user_failures=FailureWindow(settings.login_max_failures * 2, window),
    )
    closers = [services.release, *([writer.close] if writer else [])]
    return create_app(services, on_shutdown=closers), writer


def api_app_from_env() -> FastAPI:
    """uvicorn factory for ``cctv-vault api --workers N``: each worker builds its own app."""
    settings = Settings()
    tune_api_process(settings)
    app, _writer = build_api(settings, open_vault(settings))
    return app


def tune_api_process(settings: Settings) -> None:
    """Settings for a process that only serves the API.

    The thread switch interval: every audited call hands its event to the ledger writer thread
    and waits for it, while request threads and the event loop keep the GIL busy. With the
    interpreter's 5 ms interval the writer waits up to 5 ms for the GIL at each of its steps
    (each SQLite or network call releases and retakes it), and the whole API waits on it: P3
    measured ~460-530 audited calls/s against ~700-790 at 0.5 ms (docs/ref/bench.md).
    """
    sys.setswitchinterval(settings.api_gil_switch_ms / 1000)
