"""Pending work in the spool: closed segments, gaps and events waiting to be committed.

Layout of a spool directory (one per process, shared by its cameras)::

    <id>.mp4     fragmented MP4 being written or waiting for commit
    <id>.jpg     its thumbnail (optional)
    <id>.json    the segment manifest: state "open" while recording, "closed" when complete;
                 commit adds the seals so that a retried commit writes the same bytes
    gap-<id>.json, event-<id>.json   records waiting for the catalog

Every file is replaced atomically (temp, fsync, rename, directory fsync).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from vault.crypto import Seal
from vault.timerange import parse_instant

__all__ = ["PendingGap", "PendingSegment", "atomic_write", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _seal_to_json(seal: Seal | None) -> dict[str, str] | None:
    if seal is None:
        return None
    return {
        "key_id": seal.key_id,
        "wrapped_dek": base64.b64encode(seal.wrapped_dek).decode(),
        "nonce": base64.b64encode(seal.nonce).decode(),
    }


def _seal_from_json(raw: dict[str, str] | None) -> Seal | None:
    if raw is None:
        return None
    return Seal(
        key_id=raw["key_id"],
        wrapped_dek=base64.b64decode(raw["wrapped_dek"]),
        nonce=base64.b64decode(raw["nonce"]),
    )


@dataclass(frozen=True, slots=True)
class PendingSegment:
    segment_id: str
    camera_id: str
    run_id: str
    run_started_at: datetime
    restamped: bool
    start: datetime
    state: str = "open"  # open | closed
    end: datetime | None = None
    media_duration: float = 0.0
    frames: int = 0
    codec: str = ""
    width: int = 0
    height: int = 0
    clock_offset_ms: float | None = None
    seal: Seal | None = None
    thumb_seal: Seal | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def media_path(self, spool: Path) -> Path:
        return spool / f"{self.segment_id}.mp4"

    def thumb_path(self, spool: Path) -> Path:
        return spool / f"{self.segment_id}.jpg"

    def manifest_path(self, spool: Path) -> Path:
        return spool / f"{self.segment_id}.json"

    def to_json(self) -> bytes:
        raw: dict[str, Any] = asdict(self)
        for key in ("run_started_at", "start", "end"):
            value = raw[key]
            raw[key] = value.isoformat() if value is not None else None
        raw["seal"] = _seal_to_json(self.seal)
        raw["thumb_seal"] = _seal_to_json(self.thumb_seal)
        raw["warnings"] = list(self.warnings)
        return json.dumps(raw, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PendingSegment:
        raw = json.loads(data)
        raw["run_started_at"] = parse_instant(raw["run_started_at"])
        raw["start"] = parse_instant(raw["start"])
        raw["end"] = parse_instant(raw["end"]) if raw.get("end") else None
        raw["seal"] = _seal_from_json(raw.get("seal"))
        raw["thumb_seal"] = _seal_from_json(raw.get("thumb_seal"))
        raw["warnings"] = tuple(raw.get("warnings", ()))
        return cls(**raw)

    def save(self, spool: Path) -> None:
        atomic_write(self.manifest_path(spool), self.to_json())

    def with_(self, **changes: Any) -> PendingSegment:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class PendingGap:
    gap_id: str
    camera_id: str
    start: datetime
    end: datetime
    reason: str
    # When set, committing the gap also appends this audit action (e.g. footage dropped from
    # a full spool), in the same transaction: never silently.
    audit_action: str | None = None
    audit_details: dict[str, Any] | None = None

    def path(self, spool: Path) -> Path:
        return spool / f"gap-{self.gap_id}.json"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "gap_id": self.gap_id,
                "camera_id": self.camera_id,
                "start": self.start.isoformat(),
                "end": self.end.isoformat(),
                "reason": self.reason,
                "audit_action": self.audit_action,
                "audit_details": self.audit_details,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PendingGap:
        raw = json.loads(data)
        return cls(
            gap_id=raw["gap_id"],
            camera_id=raw["camera_id"],
            start=parse_instant(raw["start"]),
            end=parse_instant(raw["end"]),
            reason=raw["reason"],
            audit_action=raw.get("audit_action"),
            audit_details=raw.get("audit_details"),
        )

    def save(self, spool: Path) -> None:
        atomic_write(self.path(spool), self.to_json())
