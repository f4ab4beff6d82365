"""The purge: footage goes when its retention ends, never while a hold covers it, with proof.

Design note: docs/design/purge.md. The decision is :func:`vault.retention.plan` (pure); this
module carries it out and proves it.

Invariants:

- P1 (I5, not before). A segment is marked ``purging`` only in a transaction that re-reads it as
  ``stored`` with ``retention_until <= as_of`` and ``as_of <= now``; the store's own lock
  (S3 governance retention, the filesystem store's lock attribute) refuses anything earlier.
- P2 (holds win). Active holds are read again in the transaction that marks a batch, and a
  ``purging`` row resumed after a crash is put back to ``stored`` if a hold now covers it and
  its object still exists. An object the store refuses to delete (retention, legal hold) keeps
  its row ``stored``: counted as failed, logged, never marked purged.
- P3 (I6, I7). A row is ``stored`` (object present), ``purging`` (objects may be partly gone;
  its keys are still known to ``check``) or ``purged`` (objects verified absent, wrapped data
  keys destroyed, a verified tombstone naming its run). ``purged`` and its tombstone and ledger
  event commit in one transaction, only after the store confirmed every key is gone.
- P4 (one at a time). A purge holds an exclusive lock (PostgreSQL advisory lock; a ``flock``
  next to the SQLite file) for its whole run, so a ``purging`` row or a ``running`` run found
  by a purge holding the lock was left by a crash.
- P5 (proof). Every run ends with a signed certificate under ``ledger/certificates/{run}.json``
  (locked like the ledger checkpoints) whose segments are exactly the tombstones naming the run
  and exactly the segments of its ``purge.batch`` ledger events; the run row and a
  ``purge.run`` ledger event record the certificate's SHA-256. A run cut short by a crash gets
  its certificate from the next run (state ``interrupted``).

Order of one batch: mark ``purging`` (commit) -> delete the segment objects (``delete_many``,
<= 1000 keys a call) -> delete the thumbnails of those deleted -> ``present`` (a HEAD of every
key, batched by the store): none left ->
null the wrapped data keys, tombstones, ``purged``, run counters, one ``purge.batch`` ledger
event (one commit). Refused objects go back to ``stored`` in that same commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    String,
    Table,
    and_,
    any_,
    func,
    insert,
    literal,
    literal_column,
    or_,
    text,
    update,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression
from sqlmodel import Session, col, select

from vault import ledger
from vault.checkpoints import LEDGER_RETENTION
from vault.db import unit_of_work
from vault.errors import Conflict, IntegrityError, InvalidInput, NotFound, VaultError
from vault.holds import active_holds
from vault.ledger import canonical
from vault.lifecycle import VaultContext
from vault.models import AuditEvent, PurgeRun, Segment, SegmentState, Tombstone
from vault.retention import MAX_BATCH, DueSegment, HeldBack, HoldScope, plan
from vault.signing import SigningKey, load_public_key, public_key_id, verify_signature
from vault.store.base import MAX_DELETE_BATCH, DeleteFailure
from vault.timerange import TimeRange, as_utc

__all__ = [
    "CERTIFICATE_FORMAT",
    "CERTIFICATE_PREFIX",
    "METHOD",
    "VERIFICATION",
    "CameraTally",
    "DeletionCertificate",
    "HoldTally",
    "PurgeReport",
    "Refusal",
    "RunState",
    "RunVerification",
    "certificate_key",
    "parse_certificate",
    "resume_purge",
    "run_purge",
    "verify_certificate",
    "verify_run",
]

log = logging.getLogger(__name__)

METHOD = "delete + cryptographic erase"
VERIFICATION = (
    "after delete_many (which on S3 removes every version of the key and lists the versions "
    "again), the store found none of the segment and thumbnail keys (S3: HEAD of every key; "
    "filesystem: a listing of each directory holding many of them, else a stat of each key); "
    "then the wrapped data keys were set to NULL in the catalog (cryptographic erase, NIST SP "
    "800-88)"
)
CERTIFICATE_PREFIX = "ledger/certificates/"
CERTIFICATE_FORMAT = "cctv-vault/deletion-certificate/v1"
ACTOR = "system:purge"
PURPOSE = "retention"
_PLAN_CHUNK = 20_000  # due rows read (and planned) per query
# Concurrent store calls per batch, by store: S3 round trips overlap; the filesystem store
# spreads one delete_many over its own threads inside its lock, so it gets one call at a time.
_STORE_WORKERS = {"s3": 8}
_MIN_DELETE_CALL = 125
_MIN_HEAD_CALL = 250
# Advisory lock (class "purg", object = the schema): one purge per catalog, and catalogs in
# other schemas of the same database (tests, several vaults) do not exclude each other.
_PG_LOCK_KEY = 0x70757267
_PG_LOCK = "SELECT pg_try_advisory_lock(:k, hashtext(current_schema()))"
_PG_UNLOCK = "SELECT pg_advisory_unlock(:k, hashtext(current_schema()))"
_DETAIL_MAX = 2000  # purge_run.detail width
_memory_lock = threading.Lock()  # in-memory SQLite: one process, so one lock is enough


class RunState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # ended by an error; its certificate covers what it did
    INTERRUPTED = "interrupted"  # the process died; the next run wrote its certificate


def certificate_key(run_id: str) -> str:
    return f"{CERTIFICATE_PREFIX}{run_id}.json"


# -- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraTally:
    """What went (or, in a dry run, would go) of one camera."""

    camera_id: str
    segments: int
    bytes: int
    first_start: datetime | None
    last_end: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera_id,
            "segments": self.segments,
            "bytes": self.bytes,
            "first_start": _iso(self.first_start) if self.first_start else None,
            "last_end": _iso(self.last_end) if self.last_end else None,
        }


@dataclass(frozen=True, slots=True)
class HoldTally:
    """The due segments one hold kept back, and of which cameras."""

    hold_id: str
    kind: str
    segments: int
    bytes: int
    cameras: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.hold_id,
            "kind": self.kind,
            "segments": self.segments,
            "bytes": self.bytes,
            "cameras": dict(sorted(self.cameras.items())),
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A due segment that did not go: the store refused (or kept) one of its objects."""

    segment_id: str
    key: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"segment": self.segment_id, "key": self.key, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class PurgeReport:
    run_id: str | None  # None for a dry run: it writes nothing
    dry_run: bool
    trigger: str
    state: str  # a RunState, or "dry-run"
    as_of: datetime
    started_at: datetime
    finished_at: datetime
    purged: int
    purged_bytes: int
    resumed: int  # rows left ``purging`` by an interrupted run and finished by this one
    held_back: int  # distinct due segments a hold kept
    failed: tuple[Refusal, ...]
    cameras: tuple[CameraTally, ...]
    holds: tuple[HoldTally, ...]
    recovered_runs: tuple[str, ...]  # interrupted runs this run closed (with certificates)
    certificate_key: str | None
    certificate_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "trigger": self.trigger,
            "state": self.state,
            "as_of": _iso(self.as_of),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "purged": self.purged,
            "purged_bytes": self.purged_bytes,
            "resumed": self.resumed,
            "held_back": self.held_back,
            "failed": [r.to_dict() for r in self.failed],
            "cameras": [c.to_dict() for c in self.cameras],
            "holds": [h.to_dict() for h in self.holds],
            "recovered_runs": list(self.recovered_runs),
            "certificate_key": self.certificate_key,
            "certificate_sha256": self.certificate_sha256,
        }


def _iso(at: datetime) -> str:
    return as_utc(at).isoformat(timespec="microseconds")


class _Tallies:
    """Running totals of a run (or a dry run): per camera that went, per hold that kept."""

    def __init__(self) -> None:
        self.cameras: dict[str, list[Any]] = {}  # camera -> [segments, bytes, first, last]
        self.holds: dict[str, list[Any]] = {}  # hold -> [kind, segments, bytes, {camera: n}]
        self.held_ids = 0
        self.failed: list[Refusal] = []
        self.resumed = 0

    def went(self, camera_id: str, size: int, start: datetime, end: datetime) -> None:
        entry = self.cameras.setdefault(camera_id, [0, 0, start, end])
        entry[0] += 1
        entry[1] += size
        entry[2] = min(entry[2], start)
        entry[3] = max(entry[3], end)

    def held(self, held: Iterable[HeldBack]) -> None:
        distinct: set[str] = set()
        for kept in held:
            entry = self.holds.setdefault(kept.hold.id, [kept.hold.kind, 0, 0, {}])
            for segment in kept.segments:
                distinct.add(segment.id)
                entry[1] += 1
                entry[2] += segment.bytes
                entry[3][segment.camera_id] = entry[3].get(segment.camera_id, 0) + 1
        self.held_ids += len(distinct)

    def camera_tallies(self) -> tuple[CameraTally, ...]:
        return tuple(
            CameraTally(camera, n, size, first, last)
            for camera, (n, size, first, last) in sorted(self.cameras.items())
        )

    def hold_tallies(self) -> tuple[HoldTally, ...]:
        return tuple(
            HoldTally(hold_id, kind, n, size, dict(cams))
            for hold_id, (kind, n, size, cams) in self.holds.items()
        )

    def detail(self, error: str = "") -> str:
        """The run row's ``detail``: per-hold counts (for a certificate written after a crash)
        and the error, if any, within the column's width."""
        holds = [
            [t.hold_id, t.kind, t.segments, t.bytes]
            for t in sorted(self.hold_tallies(), key=lambda t: -t.segments)
        ]
        document: dict[str, Any] = {"holds": holds}
        if error:
            document["error"] = error[:500]
        encoded = json.dumps(document, sort_keys=True)
        while len(encoded) > _DETAIL_MAX and document["holds"]:
            document["holds"] = document["holds"][:-1]
            document["holds_omitted"] = len(holds) - len(document["holds"])
            encoded = json.dumps(document, sort_keys=True)
        return encoded


class _Row(NamedTuple):
    id: str
    camera_id: str
    start: datetime
    end: datetime
    retention_until: datetime
    bytes: int
    sha256: str
    object_key: str
    thumb_key: str | None


_SEGMENT: Table = Segment.__table__  # type: ignore[attr-defined]
_TOMBSTONE: Table = Tombstone.__table__  # type: ignore[attr-defined]
_ROW_COLUMNS = (
    col(Segment.id),
    col(Segment.camera_id),
    col(Segment.start),
    col(Segment.end),
    col(Segment.retention_until),
    col(Segment.bytes),
    col(Segment.sha256),
    col(Segment.object_key),
    col(Segment.thumb_key),
)


class _Removal(NamedTuple):
    """What the store did with one batch (steps 7.2-7.4), for its record (step 7.5)."""

    done: list[_Row]  # every object verified gone
    back: list[str]  # segment ids going back to ``stored``
    failed: list[Refusal]
    resumed: bool


def due_chunk(as_of: datetime, after: tuple[datetime, str] | None) -> Any:
    """The next ``_PLAN_CHUNK`` stored segments due by ``as_of``, oldest deadline first, after
    the keyset position ``after`` (the last row's deadline and id).

    A range of the ``(state, retention_until)`` index: purged rows and footage not yet due are
    never read, however many there are.
    """
    stmt = (
        sa_select(*_ROW_COLUMNS)
        .where(col(Segment.state) == SegmentState.STORED)
        .where(col(Segment.retention_until) <= as_of)
    )
    if after is not None:
        stmt = stmt.where(
            or_(
                col(Segment.retention_until) > after[0],
                and_(col(Segment.retention_until) == after[0], col(Segment.id) > after[1]),
            )
        )
    return stmt.order_by(col(Segment.retention_until), col(Segment.id)).limit(_PLAN_CHUNK)


def _rows(session: Session, stmt: Any) -> list[_Row]:
    # On the session's connection: a plain column select needs none of the ORM's loading.
    return list(map(_Row._make, session.connection().execute(stmt)))


def _held(holds: Sequence[HoldScope], row: _Row) -> list[HoldScope]:
    span = TimeRange(row.start, row.end)
    return [h for h in holds if h.covers(row.camera_id, span)]


def _due(row: _Row) -> DueSegment:
    return DueSegment(row.id, row.camera_id, TimeRange(row.start, row.end), row.retention_until,
                      row.bytes)


# -- mutual exclusion --------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """One purge at a time across processes (P4); a second one gets :class:`Conflict`."""
    busy = Conflict("another purge is running; try again when it has finished")
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = conn.execute(text(_PG_LOCK), {"k": _PG_LOCK_KEY}).scalar()
            conn.commit()
            if not got:
                raise busy
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a dead session has released it already
                    conn.execute(text(_PG_UNLOCK), {"k": _PG_LOCK_KEY})
                    conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        path = Path(database).with_name(Path(database).name + ".purge-lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            yield
        finally:
            os.close(fd)  # closing releases the flock; the kernel does so on kill -9 too
        return
    if not _memory_lock.acquire(blocking=False):
        raise busy
    try:
        yield
    finally:
        _memory_lock.release()


def _begin_write(session: Session) -> None:
    """Take SQLite's write lock first, so the ledger head read later cannot go stale."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# -- the run -----------------------------------------------------------------------------------


def run_purge(
    ctx: VaultContext,
    *,
    signing_key: SigningKey,
    trigger: str,
    as_of: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = MAX_BATCH,
) -> PurgeReport:
    """Purge everything whose retention ended as of ``as_of`` (default: now) and no hold covers.

    Idempotent: a run after a missed night purges everything due since, once. Every run first
    closes runs a crash interrupted and finishes rows they left ``purging``. A dry run changes
    nothing (no run row, no ledger event, no object) and may look ahead (``as_of`` after now);
    a real run may not. Raises :class:`Conflict` if another purge is running,
    :class:`Unavailable` if the catalog or the store cannot be reached (rows stay ``purging``
    and the next run finishes them).
    """
    if not isinstance(trigger, str) or not trigger or len(trigger) > 64:
        raise InvalidInput("trigger must be a non-empty string of at most 64 characters")
    if not 1 <= batch_size <= min(MAX_BATCH, MAX_DELETE_BATCH):
        raise InvalidInput(f"batch_size must be between 1 and {MAX_BATCH} (got {batch_size})")
    now = as_utc(ctx.clock.now(), field="clock")
    as_of = now if as_of is None else as_utc(as_of, field="as_of")
    if dry_run:
        return _dry_run(ctx, trigger, as_of, now, batch_size)
    if as_of > now:
        raise InvalidInput(
            f"a purge cannot run as of {_iso(as_of)}, after now ({_iso(now)}): footage is never"
            " deleted before its retention ends (only a dry run may look ahead)"
        )
    with _exclusive(ctx.engine):
        recovered = _close_interrupted_runs(ctx, signing_key)
        return _Run(ctx, signing_key, trigger, as_of, batch_size, recovered).execute()


def resume_purge(ctx: VaultContext, *, signing_key: SigningKey) -> PurgeReport | None:
    """At start-up: finish what a crashed purge left (its certificate, its ``purging`` rows),
    and nothing else; None if nothing was left. The finishing run has trigger ``resume``.

    Raises :class:`Conflict` if a purge is running (then nothing was left by a crash).
    """
    with _exclusive(ctx.engine):
        with unit_of_work(ctx.engine) as session:
            left = session.exec(
                select(Segment.id).where(col(Segment.state) == SegmentState.PURGING).limit(1)
            ).first()
            running = session.exec(
                select(PurgeRun.id).where(col(PurgeRun.state) == RunState.RUNNING).limit(1)
            ).first()
        if left is None and running is None:
            return None
        recovered = _close_interrupted_runs(ctx, signing_key)
        if left is None:
            log.info("purge resume closed interrupted runs=%s", ",".join(recovered))
            now = as_utc(ctx.clock.now(), field="clock")
            return _empty_report("resume", now, recovered)
        run = _Run(ctx, signing_key, "resume", as_utc(ctx.clock.now()), MAX_BATCH, recovered)
        return run.execute(plan_due=False)


def _empty_report(trigger: str, now: datetime, recovered: Sequence[str]) -> PurgeReport:
    return PurgeReport(
        run_id=None, dry_run=False, trigger=trigger, state=RunState.DONE, as_of=now,
        started_at=now, finished_at=now, purged=0, purged_bytes=0, resumed=0, held_back=0,
        failed=(), cameras=(), holds=(), recovered_runs=tuple(recovered),
        certificate_key=None, certificate_sha256=None,
    )


class _Run:
    def __init__(
        self,
        ctx: VaultContext,
        key: SigningKey,
        trigger: str,
        as_of: datetime,
        batch_size: int,
        recovered: Sequence[str],
    ) -> None:
        self.ctx = ctx
        self.key = key
        self.trigger = trigger
        self.as_of = as_of
        self.batch_size = batch_size
        self.recovered = tuple(recovered)
        self.id = str(uuid.uuid4())
        self.tallies = _Tallies()
        self.batches = 0
        self.purged = 0
        self.purged_bytes = 0
        self.started_at = self._now()
        self._pool: ThreadPoolExecutor  # store calls in parallel, for the length of the run
        self._stage: ThreadPoolExecutor  # one batch's store work while the next is marked
        self._in_flight: list[Future[_Removal]] = []  # oldest first, recorded in this order
        self.plan_due = True
        self.workers = _STORE_WORKERS.get(ctx.store.name, 1)

    def _now(self) -> datetime:
        return as_utc(self.ctx.clock.now(), field="clock")

    def execute(self, *, plan_due: bool = True) -> PurgeReport:
        self.plan_due = plan_due
        with unit_of_work(self.ctx.engine) as session:
            session.add(
                PurgeRun(
                    id=self.id,
                    started_at=self.started_at,
                    as_of=self.as_of,
                    state=RunState.RUNNING,
                    trigger=self.trigger,
                )
            )
        log.info(
            "purge run started run=%s trigger=%s as_of=%s", self.id, self.trigger, _iso(self.as_of)
        )
        try:
            with (
                ThreadPoolExecutor(self.workers, thread_name_prefix="purge") as self._pool,
                ThreadPoolExecutor(1, thread_name_prefix="purge-store") as self._stage,
            ):
                self._resume_purging()
                if plan_due:
                    self._purge_due()
                self._settle(keep=0)
        except Exception as exc:
            error = exc.message if isinstance(exc, VaultError) else type(exc).__name__
            log.error("purge run failed run=%s error=%s", self.id, error)
            try:
                self._finish(RunState.FAILED, error)
            except Exception as second:  # the next run closes it as interrupted
                log.error(
                    "purge run could not record its failure run=%s error=%s",
                    self.id,
                    second.message if isinstance(second, VaultError) else type(second).__name__,
                )
            raise
        return self._finish(RunState.DONE)

    # -- what goes --

    def _resume_purging(self) -> None:
        """Finish rows an interrupted run left ``purging`` (P2: unless a hold now covers them
        or their retention was extended, and their object is still there)."""
        last = ""
        while True:
            with unit_of_work(self.ctx.engine) as session:
                rows = _rows(
                    session,
                    sa_select(*_ROW_COLUMNS)
                    .where(col(Segment.state) == SegmentState.PURGING)
                    .where(col(Segment.id) > last)
                    .order_by(col(Segment.id))
                    .limit(self.batch_size),
                )
                holds = active_holds(session, self.as_of)
            if not rows:
                # Recorded before planning: rows put back to ``stored`` are then seen (and
                # their holds counted) by the plan.
                self._settle(keep=0)
                return
            last = rows[-1].id
            going: list[_Row] = []
            kept: list[_Row] = []
            covered = {row.id: _held(holds, row) for row in rows}
            spared = [r for r in rows if covered[r.id] or r.retention_until > self.as_of]
            # Existence only (one listing per directory), never the lock: an object whose lock
            # cannot be read is still there, and a spared row keeps it.
            present = self._present([r.object_key for r in spared]) if spared else set()
            keep = {r.id for r in spared if r.object_key in present}
            for row in rows:
                covering = covered[row.id]
                if row.id in keep:
                    kept.append(row)
                    if not self.plan_due:  # else the plan sees it again and counts its hold
                        self.tallies.held(HeldBack(h, (_due(row),)) for h in covering)
                else:
                    # Its footage is already gone (or it is simply due): finish the purge.
                    going.append(row)
            self.tallies.resumed += len(going)
            self._execute(going, resumed=True, revert=kept)

    def _purge_due(self) -> None:
        cursor: tuple[datetime, str] | None = None
        while True:
            with unit_of_work(self.ctx.engine) as session:
                rows = _rows(session, due_chunk(self.as_of, cursor))
                holds = active_holds(session, self.as_of)
            if not rows:
                return
            cursor = (rows[-1].retention_until, rows[-1].id)
            # Batches in key order: each touches few directories (filesystem) or prefixes (S3).
            rows.sort(key=lambda r: r.object_key)
            decided = plan([_due(r) for r in rows], holds, self.as_of, self.batch_size)
            by_id = {r.id: r for r in rows}
            self.tallies.held(decided.held)
            with unit_of_work(self.ctx.engine) as session:
                session.execute(
                    update(PurgeRun)
                    .where(col(PurgeRun.id) == self.id)
                    .values(held_back=self.tallies.held_ids, detail=self.tallies.detail())
                    .execution_options(synchronize_session=False)
                )
            for batch in decided.batches:
                marked = self._mark([by_id[s.id] for s in batch])
                self._execute(marked, resumed=False)

    def _mark(self, batch: Sequence[_Row]) -> list[_Row]:
        """Step 7.1 (commit): ``stored`` -> ``purging``, re-checking deadline and holds (P1, P2).

        The update's own conditions decide (still stored, still due: a policy lengthened since
        the plan wins); the rows it returns are the ones marked.
        """
        with unit_of_work(self.ctx.engine) as session:
            _begin_write(session)
            holds = active_holds(session, self.as_of)
            unheld: list[_Row] = list(batch) if not holds else []
            for row in batch if holds else ():
                covering = _held(holds, row)
                if covering:  # a hold placed since the plan was made wins
                    self.tallies.held(HeldBack(h, (_due(row),)) for h in covering)
                else:
                    unheld.append(row)
            if not unheld:
                return []
            result = session.connection().execute(
                update(_SEGMENT)
                .where(
                    _among([r.id for r in unheld], session, SegmentState.STORED, self.as_of)
                )
                .values(state=SegmentState.PURGING)
                .returning(col(Segment.id))
            )
            marked = set(result.scalars())
        if len(marked) == len(unheld):
            return unheld
        return [r for r in unheld if r.id in marked]

    def _execute(self, rows: Sequence[_Row], *, resumed: bool, revert: Sequence[_Row] = ()) -> None:
        """Steps 7.2-7.5 for rows already ``purging``: delete, verify, erase and record.

        The store work (7.2-7.4) of a batch runs on the stage thread while this thread marks
        the next batch and records the previous one: disk and catalog overlap. Each batch keeps
        its own order (marked, then deleted, verified, then recorded), batches are recorded in
        the order they were marked, and at most two are between mark and record.
        """
        if not rows and not revert:
            return
        self._in_flight.append(self._stage.submit(self._remove, rows, resumed, revert))
        self._settle(keep=1)

    def _settle(self, *, keep: int) -> None:
        """Record (step 7.5) the oldest batches in flight until ``keep`` are left."""
        while len(self._in_flight) > keep:
            removal = self._in_flight.pop(0).result()
            for refusal in removal.failed:
                log.warning(
                    "purge refused run=%s segment=%s key=%s reason=%s",
                    self.id,
                    refusal.segment_id,
                    refusal.key,
                    refusal.reason,
                )
            self._record(removal.done, removal.back, removal.failed, resumed=removal.resumed)

    def _remove(self, rows: Sequence[_Row], resumed: bool, revert: Sequence[_Row]) -> _Removal:
        """Steps 7.2-7.4, store only (no catalog): delete objects, then thumbnails, verify."""
        refused: dict[str, Refusal] = {}  # object refused: the row goes back to stored
        incomplete: dict[str, Refusal] = {}  # object gone, not all else: stays purging
        by_key = {r.object_key: r for r in rows}
        for failure in self._delete([r.object_key for r in rows]):
            row = by_key[failure.key]
            refused[row.id] = Refusal(row.id, failure.key, failure.reason)
        deleted = [r for r in rows if r.id not in refused]
        by_thumb = {r.thumb_key: r for r in deleted if r.thumb_key}
        for failure in self._delete(list(by_thumb)):
            row = by_thumb[failure.key]
            incomplete[row.id] = Refusal(row.id, failure.key, failure.reason)
        present = self._present(
            [k for r in deleted if r.id not in incomplete for k in (r.object_key, r.thumb_key) if k]
        )
        for row in deleted:
            key = next((k for k in (row.object_key, row.thumb_key) if k in present), None)
            if key is not None and row.id not in incomplete:
                incomplete[row.id] = Refusal(row.id, key, "still present after the delete")
        done = [r for r in deleted if r.id not in incomplete]
        back = [r.id for r in revert] + list(refused)
        return _Removal(done, back, [*refused.values(), *incomplete.values()], resumed)

    def _split(self, keys: Sequence[str], smallest: int) -> list[Sequence[str]]:
        """Up to ``self.workers`` slices of at least ``smallest`` keys (<= 1000 each)."""
        size = min(MAX_DELETE_BATCH, max(smallest, -(-len(keys) // self.workers)))
        return list(_chunks(keys, size))

    def _delete(self, keys: Sequence[str]) -> list[DeleteFailure]:
        """Delete ``keys`` with concurrent ``delete_many`` calls (S3 round trips overlap; the
        filesystem store serialises them on its own lock)."""
        slices = self._split(keys, _MIN_DELETE_CALL)
        if self.workers == 1 or len(slices) <= 1:
            return [f for part in slices for f in self.ctx.store.delete_many(part)]
        return [f for part in self._pool.map(self.ctx.store.delete_many, slices) for f in part]

    def _present(self, keys: Sequence[str]) -> set[str]:
        """The keys the store still finds (step 7.4: verify they are gone)."""
        present = self.ctx.store.present
        slices = self._split(keys, _MIN_HEAD_CALL)
        if self.workers == 1 or len(slices) <= 1:
            return {k for part in slices for k in present(part)}
        return {k for part in self._pool.map(present, slices) for k in part}

    def _record(
        self, done: Sequence[_Row], back: Sequence[str], failed: Sequence[Refusal], *,
        resumed: bool,
    ) -> None:
        """Step 7.5, one transaction: erase keys, tombstones, ``purged``, counters, ledger."""
        size = sum(r.bytes for r in done)
        ids = [r.id for r in done]
        with unit_of_work(self.ctx.engine) as session:
            _begin_write(session)
            connection = session.connection()
            at = self._now()
            if done:
                # Core statements on the session's connection (no ORM bookkeeping per row);
                # the tombstones are copied from the rows by the database in one statement.
                purged = connection.execute(
                    update(_SEGMENT)
                    .where(_among(ids, session, SegmentState.PURGING))
                    .values(
                        state=SegmentState.PURGED,
                        purged_at=at,
                        wrapped_dek=None,  # cryptographic erase: the data keys are gone
                        thumb_wrapped_dek=None,
                    )
                ).rowcount
                if purged != len(done):
                    raise Conflict("segments changed state while being purged")
                stones = connection.execute(
                    _tombstones_from_rows(_among(ids, session, SegmentState.PURGED), at, self.id)
                ).rowcount
                if stones != len(done):
                    raise Conflict(f"{stones} tombstones written for {len(done)} segments")
            if back:
                connection.execute(
                    update(_SEGMENT)
                    .where(_among(back, session, SegmentState.PURGING))
                    .values(state=SegmentState.STORED)
                )
            session.execute(
                update(PurgeRun)
                .where(col(PurgeRun.id) == self.id)
                .values(
                    purged=col(PurgeRun.purged) + len(done),
                    purged_bytes=col(PurgeRun.purged_bytes) + size,
                    failed=col(PurgeRun.failed) + len(failed),
                    held_back=self.tallies.held_ids,
                    detail=self.tallies.detail(),
                )
                .execution_options(synchronize_session=False)
            )
            self.batches += 1
            ledger.append(
                session,
                at=at,
                actor=ACTOR,
                role="system",
                action="purge.batch",
                target=f"purge-run:{self.id}",
                purpose=PURPOSE,
                decision="done" if not failed else "partial",
                reason="retention ended; no hold covers the footage",
                details={
                    "run_id": self.id,
                    "batch": self.batches,
                    "resumed": resumed,
                    "segments": ids,
                    "bytes": size,
                    "refused": [f.to_dict() for f in failed],
                    "reverted": list(back),
                    "method": METHOD,
                },
            )
        for row in done:
            self.tallies.went(row.camera_id, row.bytes, row.start, row.end)
        self.tallies.failed.extend(failed)
        self.purged += len(done)
        self.purged_bytes += size
        log.info(
            "purge batch run=%s batch=%d purged=%d bytes=%d failed=%d reverted=%d resumed=%s",
            self.id,
            self.batches,
            len(done),
            size,
            len(failed),
            len(back),
            resumed,
        )

    # -- the proof --

    def _finish(self, state: RunState, error: str = "") -> PurgeReport:
        finished_at = self._now()
        with unit_of_work(self.ctx.engine) as session:
            run = session.get(PurgeRun, self.id)
            if run is None:
                raise NotFound(f"purge run {self.id} vanished")
            run.detail = self.tallies.detail(error)
            statement = _statement(session, run, state, finished_at, self.ctx.store.name)
        key, digest = _put_certificate(self.ctx, self.key, statement)
        _close_run(self.ctx, self.id, statement, key, digest, detail=self.tallies.detail(error))
        log.info(
            "purge run finished run=%s state=%s purged=%d bytes=%d held_back=%d failed=%d"
            " certificate=%s sha256=%s",
            self.id,
            state,
            self.purged,
            self.purged_bytes,
            self.tallies.held_ids,
            len(self.tallies.failed),
            key,
            digest,
        )
        return PurgeReport(
            run_id=self.id,
            dry_run=False,
            trigger=self.trigger,
            state=state,
            as_of=self.as_of,
            started_at=self.started_at,
            finished_at=finished_at,
            purged=self.purged,
            purged_bytes=self.purged_bytes,
            resumed=self.tallies.resumed,
            held_back=self.tallies.held_ids,
            failed=tuple(self.tallies.failed),
            cameras=self.tallies.camera_tallies(),
            holds=self.tallies.hold_tallies(),
            recovered_runs=self.recovered,
            certificate_key=key,
            certificate_sha256=digest,
        )


def _among(
    ids: Sequence[str], session: Session, state: SegmentState, due_by: datetime | None = None
) -> Any:
    """The segments of ``ids`` (a batch, up to 1,000) still in ``state`` (and due by
    ``due_by``), looked up by primary key.

    The ids travel as one bound value (a JSON array on SQLite, an array on PostgreSQL), not a
    placeholder each. On SQLite, which plans without statistics, the other conditions are
    written so that they cannot use an index: given ``state = ?`` it would otherwise walk the
    ``(state, retention_until)`` index, visiting every stored (or every purged) row for each
    batch, instead of looking up the batch's ids.
    """
    segment = _SEGMENT.c
    dialect = session.connection().dialect.name
    if dialect == "sqlite":
        listed: Any = sa_select(literal_column("value")).select_from(
            func.json_each(literal(json.dumps(list(ids))))
        )
        conditions = [segment.id.in_(listed), _unindexed(segment.state) == state]
        if due_by is not None:
            conditions.append(_unindexed(segment.retention_until) <= due_by)
        return and_(*conditions)
    if dialect == "postgresql":
        conditions = [segment.id == any_(literal(list(ids), ARRAY(String())))]
    else:
        conditions = [segment.id.in_(list(ids))]
    conditions.append(segment.state == state)
    if due_by is not None:
        conditions.append(segment.retention_until <= due_by)
    return and_(*conditions)


def _unindexed(column: Any) -> Any:
    """SQLite's ``+column``: the same value, but no index is used for it."""
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


def _tombstones_from_rows(among: Any, at: datetime, run_id: str) -> Any:
    """``INSERT INTO tombstone ... SELECT ... FROM segment``: one verified tombstone per
    segment ``among`` those just marked ``purged``, its hash and keys taken from its row."""
    segment = _SEGMENT.c
    return insert(_TOMBSTONE).from_select(
        ["segment_id", "camera_id", "sha256", "object_key", "thumb_key", "deleted_at",
         "method", "verified", "purge_run_id"],
        sa_select(
            segment.id,
            segment.camera_id,
            segment.sha256,
            segment.object_key,
            segment.thumb_key,
            literal(at, _TOMBSTONE.c.deleted_at.type),
            literal(METHOD, _TOMBSTONE.c.method.type),
            literal(True, _TOMBSTONE.c.verified.type),
            literal(run_id, _TOMBSTONE.c.purge_run_id.type),
        )
        .where(among),
    ).execution_options(preserve_rowcount=True)  # psycopg reports it for INSERT only so


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- dry run -----------------------------------------------------------------------------------


def _dry_run(
    ctx: VaultContext, trigger: str, as_of: datetime, now: datetime, batch_size: int
) -> PurgeReport:
    """What a run as of ``as_of`` would do, from one consistent read; writes nothing."""
    tallies = _Tallies()
    with unit_of_work(ctx.engine) as session:
        holds = active_holds(session, as_of)
        for row in _rows(
            session,
            sa_select(*_ROW_COLUMNS).where(col(Segment.state) == SegmentState.PURGING),
        ):
            covering = _held(holds, row)
            if covering or row.retention_until > as_of:
                tallies.held(HeldBack(h, (_due(row),)) for h in covering)
            else:
                tallies.resumed += 1
                tallies.went(row.camera_id, row.bytes, row.start, row.end)
        cursor: tuple[datetime, str] | None = None
        while True:
            rows = _rows(session, due_chunk(as_of, cursor))
            if not rows:
                break
            cursor = (rows[-1].retention_until, rows[-1].id)
            decided = plan([_due(r) for r in rows], holds, as_of, batch_size)
            tallies.held(decided.held)
            for segment in decided.to_purge:
                tallies.went(segment.camera_id, segment.bytes, segment.span.start,
                             segment.span.end)
    cameras = tallies.camera_tallies()
    return PurgeReport(
        run_id=None,
        dry_run=True,
        trigger=trigger,
        state="dry-run",
        as_of=as_of,
        started_at=now,
        finished_at=now,
        purged=sum(c.segments for c in cameras),
        purged_bytes=sum(c.bytes for c in cameras),
        resumed=tallies.resumed,
        held_back=tallies.held_ids,
        failed=(),
        cameras=cameras,
        holds=tallies.hold_tallies(),
        recovered_runs=(),
        certificate_key=None,
        certificate_sha256=None,
    )


# -- certificates ------------------------------------------------------------------------------


def _statement(
    session: Session, run: PurgeRun, state: RunState, finished_at: datetime, store_name: str
) -> dict[str, Any]:
    """What a run's certificate asserts, built from the durable record: its tombstones (what
    went), its ledger batch events (what was refused), its row (counts, per-hold detail)."""
    instants: dict[datetime, str] = {}  # a batch's tombstones share one deleted_at
    segments = [
        {
            "id": t[0],
            "camera": t[1],
            "sha256": t[2],
            "object_key": t[3],
            "thumb_key": t[4],
            "deleted_at": instants.get(t[5]) or instants.setdefault(t[5], _iso(t[5])),
        }
        for t in session.connection().execute(
            sa_select(
                col(Tombstone.segment_id),
                col(Tombstone.camera_id),
                col(Tombstone.sha256),
                col(Tombstone.object_key),
                col(Tombstone.thumb_key),
                col(Tombstone.deleted_at),
            )
            .where(col(Tombstone.purge_run_id) == run.id)
            .order_by(col(Tombstone.segment_id))
        ).all()
    ]
    refused: list[dict[str, Any]] = []
    resumed = 0
    for details in _batch_events(session, run.id):
        refused.extend(details.get("refused", []))
        if details.get("resumed"):
            resumed += len(details.get("segments", []))
    try:
        detail = json.loads(run.detail) if run.detail else {}
    except ValueError:
        detail = {}
    holds = [
        {"id": h[0], "kind": h[1], "segments": h[2], "bytes": h[3]}
        for h in detail.get("holds", [])
    ]
    return {
        "run_id": run.id,
        "trigger": run.trigger,
        "state": str(state),
        "method": METHOD,
        "verification": VERIFICATION,
        "store": store_name,
        "as_of": _iso(run.as_of),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(finished_at),
        "segments": segments,
        "refused": refused,
        "held_back": {
            "segments": run.held_back,
            "holds": holds,
            "holds_omitted": int(detail.get("holds_omitted", 0)),
        },
        "totals": {
            "purged": len(segments),
            "bytes": run.purged_bytes,
            "failed": run.failed,
            "held_back": run.held_back,
            "resumed": resumed,
        },
        "error": str(detail.get("error", "")),
    }


def _batch_events(session: Session, run_id: str) -> Iterator[dict[str, Any]]:
    for details in session.exec(
        select(AuditEvent.details)
        .where(col(AuditEvent.action) == "purge.batch")
        .where(col(AuditEvent.target) == f"purge-run:{run_id}")
        .order_by(col(AuditEvent.seq))
    ):
        parsed = json.loads(details)
        if isinstance(parsed, dict):
            yield parsed


def _document(statement: Mapping[str, Any], key: SigningKey) -> bytes:
    signed = {**statement, "key_id": key.key_id}
    document = {
        "format": CERTIFICATE_FORMAT,
        "alg": "Ed25519",
        "statement": signed,
        "signature": key.sign(canonical(signed)),
        "key_id": key.key_id,
        "public_key_pem": key.public_pem().decode(),
    }
    # Compact: a night's certificate can list 100,000 segments, and only the compact form
    # goes through the C encoder.
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _put_certificate(
    ctx: VaultContext, key: SigningKey, statement: Mapping[str, Any]
) -> tuple[str, str]:
    """Put the signed certificate, locked; return its key and SHA-256."""
    object_key = certificate_key(str(statement["run_id"]))
    data = _document(statement, key)
    finished = datetime.fromisoformat(str(statement["finished_at"]))
    ctx.store.put(
        object_key,
        data,
        {"kind": "deletion-certificate", "run-id": str(statement["run_id"]), "key-id": key.key_id},
        retain_until=finished + LEDGER_RETENTION,
    )
    return object_key, hashlib.sha256(data).hexdigest()


def _close_run(
    ctx: VaultContext,
    run_id: str,
    statement: Mapping[str, Any],
    object_key: str,
    digest: str,
    *,
    detail: str | None = None,
    recovered: bool = False,
) -> None:
    """Record the certificate on the run row and in the ledger (one commit)."""
    totals = statement["totals"]
    with unit_of_work(ctx.engine) as session:
        _begin_write(session)
        run = session.get(PurgeRun, run_id)
        if run is None:
            raise NotFound(f"purge run {run_id} not found")
        run.state = str(statement["state"])
        run.finished_at = datetime.fromisoformat(str(statement["finished_at"]))
        run.certificate_key = object_key
        run.certificate_sha256 = digest
        if detail is not None:
            run.detail = detail
        session.add(run)
        ledger.append(
            session,
            at=run.finished_at,
            actor=ACTOR,
            role="system",
            action="purge.run",
            target=f"purge-run:{run_id}",
            purpose=PURPOSE,
            decision=str(statement["state"]),
            reason="deletion certificate written",
            details={
                "run_id": run_id,
                "trigger": run.trigger,
                "as_of": statement["as_of"],
                "certificate_key": object_key,
                "certificate_sha256": digest,
                "purged": totals["purged"],
                "bytes": totals["bytes"],
                "failed": totals["failed"],
                "held_back": totals["held_back"],
                "recovered": recovered,
            },
        )


def _close_interrupted_runs(ctx: VaultContext, key: SigningKey) -> list[str]:
    """Runs still ``running`` while we hold the purge lock died: give each its certificate.

    Adopt a certificate already in the store (the crash came after its put); otherwise write
    one for what the run's committed batches did, in state ``interrupted``.
    """
    with unit_of_work(ctx.engine) as session:
        runs = list(
            session.exec(
                select(PurgeRun)
                .where(col(PurgeRun.state) == RunState.RUNNING)
                .order_by(col(PurgeRun.started_at))
            )
        )
    closed: list[str] = []
    for run in runs:
        object_key = certificate_key(run.id)
        if ctx.store.head(object_key) is not None:
            data = ctx.store.get(object_key)
            certificate = parse_certificate(data)
            if certificate.run_id != run.id:
                raise IntegrityError(f"{object_key} holds the certificate of another run")
            statement: Mapping[str, Any] = certificate.statement
            digest = hashlib.sha256(data).hexdigest()
        else:
            with unit_of_work(ctx.engine) as session:
                statement = _statement(
                    session, run, RunState.INTERRUPTED, as_utc(ctx.clock.now()), ctx.store.name
                )
            object_key, digest = _put_certificate(ctx, key, statement)
        _close_run(ctx, run.id, statement, object_key, digest, recovered=True)
        closed.append(run.id)
        log.warning(
            "purge run closed after interruption run=%s state=%s purged=%d certificate=%s",
            run.id,
            statement["state"],
            statement["totals"]["purged"],
            object_key,
        )
    return closed


@dataclass(frozen=True)
class DeletionCertificate:
    """A parsed certificate. Trust comes from :func:`verify_certificate`, not from parsing."""

    statement: Mapping[str, Any]
    signature: str
    public_pem: str

    @property
    def run_id(self) -> str:
        return str(self.statement["run_id"])

    @property
    def key_id(self) -> str:
        return str(self.statement["key_id"])

    @property
    def state(self) -> str:
        return str(self.statement["state"])

    @property
    def segment_ids(self) -> tuple[str, ...]:
        return tuple(str(s["id"]) for s in self.statement["segments"])

    @property
    def totals(self) -> Mapping[str, int]:
        return {str(k): int(v) for k, v in self.statement["totals"].items()}


_STATEMENT_KEYS = frozenset(
    {
        "run_id", "trigger", "state", "method", "verification", "store", "as_of", "started_at",
        "finished_at", "segments", "refused", "held_back", "totals", "error", "key_id",
    }
)
_SEGMENT_KEYS = frozenset({"id", "camera", "sha256", "object_key", "thumb_key", "deleted_at"})


def parse_certificate(data: bytes) -> DeletionCertificate:
    """Parse a certificate strictly (form only); :class:`IntegrityError` if it is not one."""
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != CERTIFICATE_FORMAT:
            raise ValueError(f"not a {CERTIFICATE_FORMAT} document")
        if document.get("alg") != "Ed25519":
            raise ValueError("alg must be Ed25519")
        statement = document["statement"]
        if not isinstance(statement, dict) or set(statement) != _STATEMENT_KEYS:
            raise ValueError("statement has missing or unknown fields")
        segments = statement["segments"]
        if not isinstance(segments, list) or not all(
            isinstance(s, dict) and set(s) == _SEGMENT_KEYS for s in segments
        ):
            raise ValueError("segments must be a list of {id, camera, sha256, object_key, ...}")
        totals = statement["totals"]
        if not isinstance(totals, dict) or totals.get("purged") != len(segments):
            raise ValueError("totals.purged differs from the number of segments listed")
        if len({s["id"] for s in segments}) != len(segments):
            raise ValueError("a segment is listed twice")
        for name in ("as_of", "started_at", "finished_at"):
            as_utc(datetime.fromisoformat(str(statement[name])), field=name)
        signature, pem = document["signature"], document["public_key_pem"]
        if not isinstance(signature, str) or not isinstance(pem, str):
            raise ValueError("signature and public_key_pem must be strings")
        if document.get("key_id") != statement["key_id"]:
            raise ValueError("key_id differs from the statement's")
    except (ValueError, KeyError, TypeError, InvalidInput) as exc:
        raise IntegrityError(f"malformed deletion certificate: {exc}") from exc
    return DeletionCertificate(statement, signature, pem)


def _check_signature(certificate: DeletionCertificate, public: Ed25519PublicKey) -> None:
    key_id = public_key_id(public)
    if certificate.key_id != key_id:
        raise IntegrityError(
            f"certificate of run {certificate.run_id} names key {certificate.key_id}, not {key_id}"
        )
    if not verify_signature(public, canonical(certificate.statement), certificate.signature):
        raise IntegrityError(f"certificate of run {certificate.run_id}: signature does not verify")


def verify_certificate(data: bytes, public_pem: bytes) -> DeletionCertificate:
    """Verify a certificate with the signer's public key alone (no database, no store).

    Raises :class:`IntegrityError` if it is malformed, names another key, or its signature
    does not verify; returns the certificate otherwise.
    """
    certificate = parse_certificate(data)
    try:
        public = load_public_key(public_pem)
    except (ValueError, VaultError) as exc:
        raise IntegrityError(f"not an Ed25519 public key: {exc}") from exc
    _check_signature(certificate, public)
    return certificate


@dataclass(frozen=True, slots=True)
class RunVerification:
    run_id: str
    certificate: DeletionCertificate | None
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(
    ctx: VaultContext, run_id: str, public_keys: Iterable[Ed25519PublicKey]
) -> RunVerification:
    """Check one run end to end: the certificate object verifies with a trusted key and hashes
    to what the run row recorded; it lists exactly the run's tombstones (same hashes and keys)
    and exactly the segments of its ``purge.batch`` ledger events; the ``purge.run`` event
    names the same certificate; each listed segment is ``purged`` with its data keys erased and
    no object left in the store.
    """
    keys = {public_key_id(k): k for k in public_keys}
    problems: list[str] = []
    with unit_of_work(ctx.engine) as session:
        run = session.get(PurgeRun, run_id)
        if run is None:
            raise NotFound(f"purge run {run_id} not found")
        tombstones = {
            t.segment_id: t
            for t in session.exec(select(Tombstone).where(col(Tombstone.purge_run_id) == run_id))
        }
        ledger_ids: list[str] = []
        for details in _batch_events(session, run_id):
            ledger_ids.extend(str(s) for s in details.get("segments", []))
        run_events = [
            json.loads(d)
            for d in session.exec(
                select(AuditEvent.details)
                .where(col(AuditEvent.action) == "purge.run")
                .where(col(AuditEvent.target) == f"purge-run:{run_id}")
            )
        ]
        segments = {
            s.id: s
            for chunk in _chunks(list(tombstones), 500)
            for s in session.exec(select(Segment).where(col(Segment.id).in_(list(chunk))))
        }
    if run.state == RunState.RUNNING or not run.certificate_key:
        return RunVerification(run_id, None, (f"run {run_id} has no certificate yet",))
    try:
        data = ctx.store.get(run.certificate_key)
    except NotFound:
        return RunVerification(run_id, None, (f"certificate {run.certificate_key} is missing",))
    if hashlib.sha256(data).hexdigest() != run.certificate_sha256:
        problems.append("certificate object differs from the SHA-256 the run row recorded")
    try:
        certificate = parse_certificate(data)
        public = keys.get(certificate.key_id)
        if public is None:
            problems.append(f"certificate signed by {certificate.key_id}, not a trusted key")
        else:
            _check_signature(certificate, public)
    except IntegrityError as exc:
        return RunVerification(run_id, None, (*problems, exc.message))
    if certificate.run_id != run_id:
        problems.append(f"certificate names run {certificate.run_id}")
    listed = {str(s["id"]): s for s in certificate.statement["segments"]}
    if set(listed) != set(tombstones):
        problems.append(
            f"certificate lists {len(listed)} segments, the run has {len(tombstones)} tombstones"
            f" ({len(set(listed) ^ set(tombstones))} differ)"
        )
    for sid, entry in listed.items():
        stone = tombstones.get(sid)
        if stone is not None and (
            stone.sha256 != entry["sha256"] or stone.object_key != entry["object_key"]
        ):
            problems.append(f"segment {sid}: certificate and tombstone disagree")
    if len(ledger_ids) != len(set(ledger_ids)) or set(ledger_ids) != set(listed):
        problems.append("the ledger's purge.batch events do not list the certificate's segments")
    if not any(e.get("certificate_sha256") == run.certificate_sha256 for e in run_events):
        problems.append("no purge.run ledger event records this certificate")
    for sid in listed:
        segment = segments.get(sid)
        if segment is None:
            problems.append(f"segment {sid} has no catalog row")
        elif segment.state != SegmentState.PURGED or segment.wrapped_dek is not None or (
            segment.thumb_wrapped_dek is not None
        ):
            problems.append(f"segment {sid} is not purged with its data keys erased")
        else:
            for key in filter(None, (segment.object_key, segment.thumb_key)):
                if ctx.store.head(key) is not None:
                    problems.append(f"segment {sid}: {key} is still in the store")
    return RunVerification(run_id, certificate, tuple(problems))
