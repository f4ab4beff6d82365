"""I7 for the purge: ``kill -9`` of a purging process at random instants loses nothing it must
not and leaves nothing half done after the next run.

Each life is a real subprocess (this module's :func:`child`) that opens the vault from its
settings (SQLite or PostgreSQL catalog, filesystem store, system clock) and runs
``run_purge`` as of the next "night" with small batches, so every life has work to do. It is
killed with SIGKILL either by the parent at a random instant after it said it is about to
purge, or by itself at a randomly chosen store call or commit (so the kill also lands exactly
between "objects deleted" and "rows recorded"). The next life is the restart. At least
``KILLS`` kills must land in the middle of a run; then one orderly run finishes.

Afterwards: every segment is fully stored (row, wrapped key, objects that decrypt) or fully
purged (objects and keys gone, a verified tombstone, in exactly one verified certificate and in
the ledger's batch events of that run); none went before its retention ended or while a hold
covered it; ``cctv-vault check`` is clean; the ledger chain verifies.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from tests.integration.test_purge import CONFIG, T0, add_hold, record
from vault import ledger
from vault.catalog import sync_config
from vault.config import parse_config
from vault.db import make_engine, unit_of_work
from vault.lifecycle import VaultContext
from vault.models import AuditEvent, PurgeRun, Segment, SegmentState, Tombstone
from vault.purge import RunState, verify_run
from vault.settings import Settings
from vault.signing import SigningKey

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
KILLS = 12  # kills that must land while a run is in progress, at least a quarter each way
MAX_LIVES = 120  # a loaded machine shifts where random instants land; allow more lives
NIGHTS = 28  # days of footage (< 30: the last night must be past, T0 is 120 days ago)
PER_NIGHT = 10  # segments per night and camera
BATCH = 4
RETENTION = timedelta(days=90)
PG_URL = os.environ.get("CCTV_TEST_DATABASE_URL", "")


def night(n: int) -> datetime:
    """The as-of of night ``n``: everything recorded on days <= n is due (90-day policy)."""
    return T0 + timedelta(days=n) + RETENTION + timedelta(hours=1)


# -- the child ---------------------------------------------------------------------------------


def child() -> None:
    """``python -c 'from tests.e2e.test_purge_crash import child; child()' AS_OF [KILL_AT]``"""
    from cctv_vault.runtime import open_vault
    from vault.purge import run_purge
    from vault.timerange import parse_instant

    as_of = parse_instant(sys.argv[1])
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    settings = Settings()
    ctx = open_vault(settings)
    key = SigningKey.load_or_create(settings.resolved_ledger_key_file)
    if kill_at:
        ctx = _self_killing(ctx, kill_at)
    sys.stdout.write("ready\n")  # the parent's cue: the purge starts now
    sys.stdout.flush()
    began = time.monotonic()
    report = run_purge(ctx, signing_key=key, trigger="kill-test", as_of=as_of, batch_size=BATCH)
    seconds = time.monotonic() - began
    sys.stdout.write(
        json.dumps({"run": report.run_id, "purged": report.purged, "seconds": seconds}) + "\n"
    )


def _self_killing(ctx: VaultContext, kill_at: int) -> VaultContext:
    """SIGKILL this process at the ``kill_at``-th store call or transaction boundary."""
    from dataclasses import replace

    from sqlalchemy import event
    from sqlalchemy.orm import Session as OrmSession

    count = {"n": 0}

    def tick() -> None:
        count["n"] += 1
        if count["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    class Store:
        def __init__(self, inner: Any) -> None:
            self.inner, self.name = inner, inner.name

        def __getattr__(self, name: str) -> Any:
            method = getattr(self.inner, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                tick()
                result = method(*args, **kwargs)
                tick()
                return result

            return call

    event.listen(ctx.engine, "commit", lambda conn: tick())  # before a commit
    event.listen(OrmSession, "after_commit", lambda session: tick())
    return replace(ctx, store=Store(ctx.store))


# -- the parent --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
        return
    if not PG_URL:
        pytest.skip("CCTV_TEST_DATABASE_URL not set")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _life(
    env: dict[str, str], as_of: datetime, kill_at: int, delay: float | None
) -> tuple[int, float]:
    """Run one life; its exit code and, if it finished, how long its purge run took."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tests.e2e.test_purge_crash import child; child()",
         as_of.isoformat(), str(kill_at)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        cue = proc.stdout.readline()  # blocks until the child is about to purge (or died)
        if cue.strip() == "ready" and delay is not None:
            time.sleep(delay)  # fault injection: the random instant, not a synchronisation
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"purge child failed ({proc.returncode}): {err[-3000:]}")
    took = json.loads(out.splitlines()[-1])["seconds"] if proc.returncode == 0 else 0.0
    return proc.returncode, took


def _runs(ctx: VaultContext) -> list[PurgeRun]:
    with unit_of_work(ctx.engine) as session:
        return list(session.exec(select(PurgeRun).order_by(col(PurgeRun.started_at))))


def test_kill_minus_nine_of_the_purge_at_random_instants(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    seed = int(os.environ.get("CCTV_TEST_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    data = tmp_path / "data"
    settings = Settings(data_dir=data, database_url=database_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCTV_")},
        "CCTV_DATA_DIR": str(data),
        "CCTV_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }
    from cctv_vault.runtime import open_vault

    ctx = open_vault(settings)
    # Close this process's pooled connections at the end, not whenever the GC gets to them.
    request.addfinalizer(ctx.engine.dispose)
    with unit_of_work(ctx.engine) as session:
        sync_config(session, parse_config(CONFIG), {}, at=T0)
    spool = tmp_path / "spool"
    spool.mkdir()
    for n in range(NIGHTS):
        record(ctx, spool, "cam-a", T0 + timedelta(days=n), PER_NIGHT)
        record(ctx, spool, "cam-b", T0 + timedelta(days=n), PER_NIGHT, thumb=n % 2 == 0)
    all_segments = {s.id: s for s in _segments(ctx)}
    # Holds win: a legal hold over two nights of cam-b, and a store-side legal hold on one
    # cam-a object that no catalog hold explains (the store refuses; the row must stay).
    held_window = (T0 + timedelta(days=3), T0 + timedelta(days=5))
    add_hold(ctx, ["cam-b"], *held_window)
    cam_a = sorted((s for s in all_segments.values() if s.camera_id == "cam-a"),
                   key=lambda s: s.start)
    locked = cam_a[PER_NIGHT + 1]  # night 1
    ctx.store.set_legal_hold(locked.object_key, True)

    kills = {"by-parent": 0, "self": 0}  # kills that landed while a run was in progress
    left_purging = lives = 0
    n = 1
    # The parent's random instant is drawn within how long a whole run has lately taken here
    # (a faster purge or a slower machine moves it), so its kills keep landing mid-run.
    run_s = 0.6
    while sum(kills.values()) < KILLS or min(kills.values()) < KILLS // 4:
        assert lives < MAX_LIVES, f"only {kills} kills landed mid-run in {lives} lives"
        lives += 1
        by_parent = lives % 2 == 0
        code, took = _life(
            env,
            night(n),
            kill_at=0 if by_parent else rng.randint(1, 120),
            delay=rng.uniform(0.0, run_s) if by_parent else None,
        )
        if code == 0:
            run_s = max(0.02, took)
            # The next night only once a life has finished this one's work: a killed life
            # leaves its remainder to the next, so no life runs out of work to interrupt.
            n = min(n + 1, NIGHTS - 1)
        if code == -signal.SIGKILL and any(r.state == RunState.RUNNING for r in _runs(ctx)):
            kills["by-parent" if by_parent else "self"] += 1
        # Whatever was interrupted, nothing committed is undone and nothing is half purged
        # in the catalog's own terms: purging rows are the only in-between state.
        now = set(_states(ctx).values())
        assert now <= {"stored", "purging", "purged"}
        left_purging += "purging" in now

    assert sum(kills.values()) >= KILLS
    log.info(
        "purge kill test seed=%d lives=%d kills=%s lives_leaving_purging_rows=%d",
        seed, lives, kills, left_purging,
    )
    # The restart: one orderly run as of the last night finishes everything.
    assert _life(env, night(NIGHTS - 1), kill_at=0, delay=None)[0] == 0
    final = {s.id: s for s in _segments(ctx)}
    runs = _runs(ctx)
    assert all(r.state != RunState.RUNNING for r in runs)
    assert runs[-1].state == RunState.DONE

    with unit_of_work(ctx.engine) as session:
        stones = {t.segment_id: t for t in session.exec(select(Tombstone))}
        assert ledger.verify_chain(session) is None
        batch_events = [
            json.loads(d)
            for d in session.exec(
                select(AuditEvent.details).where(AuditEvent.action == "purge.batch")
            )
        ]
    as_of = {r.id: r.as_of for r in runs}
    public = SigningKey.load_or_create(settings.resolved_ledger_key_file).public
    certified: list[str] = []
    for run in runs:
        verdict = verify_run(ctx, run.id, [public])
        assert verdict.ok, (run.id, run.state, verdict.problems, f"seed={seed}")
        assert verdict.certificate is not None
        certified.extend(verdict.certificate.segment_ids)
    assert sorted(certified) == sorted(stones), "each purged segment in exactly one certificate"
    ledgered = [sid for details in batch_events for sid in details["segments"]]
    assert sorted(ledgered) == sorted(stones), "each purged segment in exactly one batch event"

    for sid, segment in final.items():
        span_held = segment.camera_id == "cam-b" and (
            segment.start < held_window[1] and held_window[0] < segment.end
        )
        if segment.state == SegmentState.PURGED:
            stone = stones[sid]
            assert stone.verified and stone.purge_run_id in as_of
            assert segment.retention_until <= as_of[stone.purge_run_id], "purged before its time"
            assert not span_held, "purged while a hold covered it"
            assert segment.wrapped_dek is None and segment.thumb_wrapped_dek is None
            for key in filter(None, (segment.object_key, segment.thumb_key)):
                assert ctx.store.head(key) is None
        else:
            assert segment.state == SegmentState.STORED, f"{sid} left {segment.state}"
            assert sid not in stones
            assert segment.wrapped_dek is not None
            assert span_held or sid == locked.id, f"{sid} is due and unheld but stored"
    assert final[locked.id].state == SegmentState.STORED
    assert len(stones) == len(final) - 2 * PER_NIGHT - 1

    check = subprocess.run(
        [sys.executable, "-c", "from cctv_vault.cli import main; main()", "check", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["ok"], report["violations"]
    assert report["decrypted"] == 2 * PER_NIGHT + 1


def _segments(ctx: VaultContext) -> Sequence[Segment]:
    with unit_of_work(ctx.engine) as session:
        return list(session.exec(select(Segment)))


def _states(ctx: VaultContext) -> dict[str, str]:
    return {s.id: s.state for s in _segments(ctx)}
