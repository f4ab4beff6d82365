"""Catalog tables (DESIGN §4). The schema itself is created by Alembic migrations."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, LargeBinary, String, Text, event, false
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel

from vault.timerange import as_utc

__all__ = [
    "MAX_SEGMENT_SECONDS",
    "SHORT_GAP",
    "AccessRequest",
    "AuditCheckpoint",
    "AuditEvent",
    "Grant",
    "Hold",
    "Principal",
    "PurgeRun",
    "Camera",
    "CameraStatus",
    "Gap",
    "HealthState",
    "RetentionPolicy",
    "Run",
    "Segment",
    "SegmentState",
    "Site",
    "Tombstone",
    "UTCDateTime",
]

COLLECTION_PURPOSE = "security"
# The longest wall-time span a segment may have: the 300 s target cap plus room for long GOPs.
# The recorder ends a run rather than exceed it, and range queries rely on it for the index.
MAX_SEGMENT_SECONDS = 600
# A gap (an outage) may last any time. Those no longer than this are found by the start index
# from the window's start minus this; longer ones are flagged (``Gap.is_long``) and found by
# their own index, so a lookup never reads a camera's whole history of outages.
SHORT_GAP = timedelta(days=1)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC instants; refuses naive ones on the way in, returns aware ones on the way out.

    SQLite has no timezone type, so values are normalised to UTC and stored without offset;
    PostgreSQL gets ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = as_utc(value)
        if dialect.name == "sqlite":
            return utc.replace(tzinfo=None)
        return utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # On SQLite the two steps (SQLAlchemy's text <-> datetime, then the UTC rules above) are
    # one C call each way: the generic composition cost ~1.4 µs per value read, a timeline
    # reads twenty-odd. Same text stored, same values read (a unit test holds them equal).
    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_instant
        return super().result_processor(dialect, coltype)


def _sqlite_text(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite storage format (microseconds always written), in UTC."""
    if value is None:
        return None
    return as_utc(value).isoformat(" ", "microseconds")[:26]  # cut "+00:00"


def _sqlite_instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        # Stored values carry no offset; appending one is cheaper than replace(tzinfo=UTC).
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:
        return datetime.fromisoformat(value).astimezone(UTC)


def _utc_col(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class SegmentState(StrEnum):
    STORED = "stored"
    PURGING = "purging"
    PURGED = "purged"


class HealthState(StrEnum):
    RECORDING = "recording"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    STOPPED = "stopped"


class Site(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    timezone: str = Field(max_length=64)


class RetentionPolicy(SQLModel, table=True):
    __tablename__ = "retention_policy"

    id: str = Field(primary_key=True, max_length=64)
    days: int
    min_days: int
    max_days: int
    basis: str = Field(max_length=200, default="")
    effective_from: datetime | None = _utc_col(nullable=True)


class Camera(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    site_id: str = Field(foreign_key="site.id", max_length=64)
    name: str = Field(max_length=200)
    location: str = Field(max_length=200, default="")
    # A redacted reference to the source: never credentials (I9).
    source_ref: str = Field(max_length=500)
    purpose: str = Field(max_length=32, default=COLLECTION_PURPOSE)
    retention_policy_id: str = Field(foreign_key="retention_policy.id", max_length=64)
    enabled: bool = True


class Run(SQLModel, table=True):
    """Footage recorded without a break; wall time of its first packet anchors its segments."""

    id: str = Field(primary_key=True, max_length=36)
    camera_id: str = Field(foreign_key="camera.id", max_length=64, index=True)
    started_at: datetime = _utc_col()
    # Camera clock minus host clock when the camera reports one (RTCP/NTP), else null.
    clock_offset_ms: float | None = None
    restamped: bool = False
    reason: str = Field(max_length=200, default="")


class Segment(SQLModel, table=True):
    __table_args__ = (
        Index("ix_segment_camera_start", "camera_id", "start"),
        # The nightly plan ("stored and due by now, oldest first") reads a range of this index:
        # purged rows, which pile up behind every deadline, and footage not yet due are never
        # visited. It also serves every lookup by state alone.
        Index("ix_segment_state_retention", "state", "retention_until"),
    )

    id: str = Field(primary_key=True, max_length=36)
    camera_id: str = Field(foreign_key="camera.id", max_length=64)
    run_id: str = Field(max_length=36)
    start: datetime = _utc_col()
    end: datetime = _utc_col()
    media_duration: float
    frames: int
    codec: str = Field(max_length=32)
    width: int
    height: int
    bytes: int
    sha256: str = Field(max_length=64)
    object_key: str = Field(max_length=500, unique=True)
    key_id: str = Field(max_length=64)
    wrapped_dek: builtins.bytes | None = Field(
        default=None, sa_column=Column(LargeBinary, nullable=True)
    )
    thumb_key: str | None = Field(default=None, max_length=500)
    thumb_sha256: str | None = Field(default=None, max_length=64)
    thumb_wrapped_dek: builtins.bytes | None = Field(
        default=None, sa_column=Column(LargeBinary, nullable=True)
    )
    purpose: str = Field(max_length=32, default=COLLECTION_PURPOSE)
    retention_until: datetime = _utc_col()
    state: str = Field(max_length=16, default=SegmentState.STORED)
    created_at: datetime = _utc_col()
    purged_at: datetime | None = _utc_col(nullable=True)


def _spans_long_default(context: Any) -> bool:
    row = context.get_current_parameters()
    return Gap.spans_long(row["start"], row["end"])


class Gap(SQLModel, table=True):
    __table_args__ = (
        Index("ix_gap_camera_start", "camera_id", "start"),
        Index("ix_gap_camera_long_end", "camera_id", "is_long", "end"),
    )

    id: str = Field(primary_key=True, max_length=36)
    camera_id: str = Field(foreign_key="camera.id", max_length=64)
    start: datetime = _utc_col()
    end: datetime = _utc_col()
    reason: str = Field(max_length=500)
    created_at: datetime = _utc_col()
    # Longer than SHORT_GAP: derived from start and end, stored because the gap lookup needs
    # an index on it (an expression index on "end - start" is not portable: SQLite keeps
    # instants as text). Set whenever the ORM writes a gap, and by a Core insert that leaves it
    # out; only raw SQL (the P4 generator's bulk load) must set it itself.
    is_long: bool = Field(
        default=False,
        sa_column=Column(
            Boolean, nullable=False, default=_spans_long_default, server_default=false()
        ),
    )

    @staticmethod
    def spans_long(start: datetime, end: datetime) -> bool:
        return end - start > SHORT_GAP


@event.listens_for(Gap, "before_insert")
@event.listens_for(Gap, "before_update")
def _flag_long_gap(_mapper: Any, _conn: Any, gap: Gap) -> None:
    gap.is_long = Gap.spans_long(gap.start, gap.end)


class Tombstone(SQLModel, table=True):
    segment_id: str = Field(primary_key=True, max_length=36)
    camera_id: str = Field(max_length=64)
    sha256: str = Field(max_length=64)
    object_key: str = Field(max_length=500)
    deleted_at: datetime = _utc_col()
    method: str = Field(max_length=100)
    verified: bool = False
    # The purge run that removed it, and the thumbnail that went with it (if any).
    purge_run_id: str | None = Field(default=None, max_length=36, index=True)
    thumb_key: str | None = Field(default=None, max_length=500)


class HoldKind(StrEnum):
    LEGAL = "legal"
    SECURITY = "security"


class Hold(SQLModel, table=True):
    """An order that suspends purging of cameras x range (DESIGN §9). Holds win over retention.

    Legal holds are placed by legal counsel (optionally under a warrant) and released by another
    person or the privacy officer; security holds are placed by a supervisor and expire.
    """

    id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(max_length=16, index=True)
    cameras: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of camera ids
    start: datetime = _utc_col()
    end: datetime = _utc_col()
    reason: str = Field(max_length=2000)
    warrant_ref: str = Field(max_length=200, default="")
    placed_by: str = Field(max_length=200)
    placed_at: datetime = _utc_col()
    expires_at: datetime | None = _utc_col(nullable=True)
    released_by: str | None = Field(default=None, max_length=200)
    released_at: datetime | None = _utc_col(nullable=True, index=True)
    release_reason: str = Field(max_length=2000, default="")


class PurgeRun(SQLModel, table=True):
    """One execution of the purge; its signed certificate lives in the store under ledger/."""

    __tablename__ = "purge_run"

    id: str = Field(primary_key=True, max_length=36)
    started_at: datetime = _utc_col(index=True)
    finished_at: datetime | None = _utc_col(nullable=True)
    as_of: datetime = _utc_col()  # "purge everything expired as of" this instant
    state: str = Field(max_length=16)  # running | done | failed
    trigger: str = Field(max_length=64)  # scheduler | cli | resume
    purged: int = 0
    purged_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    held_back: int = 0
    failed: int = 0
    certificate_key: str | None = Field(default=None, max_length=500)
    certificate_sha256: str | None = Field(default=None, max_length=64)
    detail: str = Field(max_length=2000, default="")


class CameraStatus(SQLModel, table=True):
    __tablename__ = "camera_status"

    camera_id: str = Field(primary_key=True, max_length=64)
    state: str = Field(max_length=16)
    detail: str = Field(max_length=500, default="")
    updated_at: datetime = _utc_col()
    last_segment_end: datetime | None = _utc_col(nullable=True)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    at: datetime = _utc_col()
    actor: str = Field(max_length=200)
    role: str = Field(max_length=64)
    action: str = Field(max_length=100, index=True)
    target: str = Field(max_length=500)
    purpose: str = Field(max_length=64, default="")
    decision: str = Field(max_length=16)
    reason: str = Field(max_length=1000, default="")
    client: str = Field(max_length=200, default="")
    details: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64, sa_type=String(64))
    hash: str = Field(max_length=64, sa_type=String(64))


class AuditCheckpoint(SQLModel, table=True):
    """A signed statement ``{seq, hash, at}`` about the chain head, also put in the store."""

    __tablename__ = "audit_checkpoint"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: str = Field(max_length=64, sa_type=String(64))
    at: datetime = _utc_col()
    key_id: str = Field(max_length=64)
    signature: str = Field(max_length=200)
    object_key: str = Field(max_length=500)


class Principal(SQLModel, table=True):
    """A person (or system account) who can authenticate.

    Local principals have a password hash; external (OIDC) ones are identified by issuer and
    subject and exist here only to be disabled or to pin their sites. Roles and sites are JSON
    lists of strings.
    """

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200, unique=True)
    roles: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    sites: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    password_hash: str | None = Field(default=None, max_length=500)
    external_subject: str | None = Field(default=None, max_length=500, unique=True)
    disabled: bool = False
    failed_logins: int = 0
    locked_until: datetime | None = _utc_col(nullable=True)
    created_at: datetime = _utc_col()
    updated_at: datetime = _utc_col()


class AccessRequest(SQLModel, table=True):
    """A person's stated wish to see footage: cameras x range, for a purpose, with a reason."""

    __tablename__ = "access_request"

    id: str = Field(primary_key=True, max_length=36)
    requester: str = Field(max_length=200, index=True)
    requester_role: str = Field(max_length=64)
    cameras: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of camera ids
    sites: str = Field(sa_column=Column(Text, nullable=False))  # JSON list: the cameras' sites
    start: datetime = _utc_col()
    end: datetime = _utc_col()
    purpose: str = Field(max_length=64)
    reason: str = Field(max_length=2000)
    ticket: str = Field(max_length=200, default="")
    state: str = Field(max_length=16, index=True)  # pending | granted | rejected
    decided_by: str | None = Field(default=None, max_length=200)
    decided_at: datetime | None = _utc_col(nullable=True)
    decision_reason: str = Field(max_length=2000, default="")
    created_at: datetime = _utc_col()


class Grant(SQLModel, table=True):
    """Time-limited permission for one principal to view cameras x range for one purpose."""

    id: str = Field(primary_key=True, max_length=36)
    request_id: str = Field(foreign_key="access_request.id", max_length=36, index=True)
    holder: str = Field(max_length=200, index=True)
    cameras: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of camera ids
    start: datetime = _utc_col()
    end: datetime = _utc_col()
    purpose: str = Field(max_length=64)
    granted_by: str = Field(max_length=200)
    created_at: datetime = _utc_col()
    expires_at: datetime = _utc_col(index=True)
    revoked_at: datetime | None = _utc_col(nullable=True)
    revoked_by: str | None = Field(default=None, max_length=200)
    revoke_reason: str = Field(max_length=2000, default="")
