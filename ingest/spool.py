"""Store-and-forward spool (DESIGN §5): footage waits here until the vault has it.

* bounded in bytes; a health warning at 80 %; at the bound the oldest *closed, uncommitted*
  segment is dropped and a gap with an audit event records it — never silently;
* one process owns a spool directory (an exclusive ``flock``);
* recovery at start: a segment left ``open`` by a crash is cut back to its last complete
  fragment and closed, so that at most the in-flight fragment is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest.fmp4 import summarize, truncate_to_complete_fragments
from ingest.segmenter import GapInfo
from vault.errors import ConfigError, IntegrityError
from vault.pending import PendingGap, PendingSegment, fsync_dir

__all__ = ["Recovered", "Spool"]

log = logging.getLogger(__name__)

WARN_FRACTION = 0.8
CLEAN_MARK = ".clean-stop"


@dataclass(frozen=True, slots=True)
class Recovered:
    """What recovery found for one camera: where its footage stopped, and why."""

    camera_id: str
    gap: GapInfo


class Spool:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._used_before = (root / ".lock").exists()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd: int | None = None
        self.crashed = False

    # -- ownership ----------------------------------------------------------------------------

    def acquire(self) -> None:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ConfigError(f"spool {self.root} is in use by another ingest process") from exc
        self._lock_fd = fd
        clean = self.root / CLEAN_MARK
        # Present only after an orderly stop: without it, the last process died (crash, kill).
        self.crashed = self._used_before and not clean.exists()
        clean.unlink(missing_ok=True)
        fsync_dir(self.root)

    def mark_clean(self) -> None:
        """Record an orderly stop; call only after every recorder has stopped."""
        (self.root / CLEAN_MARK).touch()
        fsync_dir(self.root)

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- listing ------------------------------------------------------------------------------

    def manifests(self) -> Iterator[PendingSegment]:
        for path in sorted(self.root.glob("*.json")):
            if path.name.startswith(("gap-", ".")):
                continue
            try:
                yield PendingSegment.from_json(path.read_bytes())
            except FileNotFoundError:
                continue  # committed (and removed) by the committer since the listing
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable spool manifest %s: %s", path.name, exc)

    def closed(self) -> list[PendingSegment]:
        return sorted((m for m in self.manifests() if m.state == "closed"), key=lambda m: m.start)

    def gaps(self) -> list[PendingGap]:
        out = []
        for path in sorted(self.root.glob("gap-*.json")):
            try:
                out.append(PendingGap.from_json(path.read_bytes()))
            except FileNotFoundError:
                continue  # committed since the listing

        return sorted(out, key=lambda g: g.start)

    def pending_ids(self) -> set[str]:
        return {m.segment_id for m in self.manifests()}

    def used_bytes(self) -> int:
        total = 0
        for path in self.root.glob("*.mp4"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def add_gap(
        self,
        camera_id: str,
        gap: GapInfo,
        *,
        audit_action: str | None = None,
        audit_details: dict[str, object] | None = None,
    ) -> PendingGap:
        pending = PendingGap(
            gap_id=str(uuid.uuid4()),
            camera_id=camera_id,
            start=gap.start,
            end=gap.end,
            reason=gap.reason,
            audit_action=audit_action,
            audit_details=audit_details,
        )
        pending.save(self.root)
        return pending

    # -- bound --------------------------------------------------------------------------------

    def enforce_bound(self) -> list[PendingSegment]:
        """Drop the oldest closed segments while the spool is over its bound; return them."""
        dropped: list[PendingSegment] = []
        used = self.used_bytes()
        if used <= self.max_bytes:
            return dropped
        for victim in self.closed():
            if used <= self.max_bytes:
                break
            size = victim.media_path(self.root).stat().st_size
            assert victim.end is not None
            self.add_gap(
                victim.camera_id,
                GapInfo(victim.start, victim.end, "spool full: footage dropped before commit"),
                audit_action="footage.dropped",
                audit_details={"segment_id": victim.segment_id, "bytes": size},
            )
            for path in (
                victim.media_path(self.root),
                victim.thumb_path(self.root),
                victim.manifest_path(self.root),
            ):
                path.unlink(missing_ok=True)
            used -= size
            dropped.append(victim)
            log.warning(
                "spool full: dropped camera=%s segment=%s start=%s bytes=%d",
                victim.camera_id,
                victim.segment_id,
                victim.start.isoformat(),
                size,
            )
        return dropped

    def quarantine(self, pending: PendingSegment, reason: str) -> Path:
        """Move a segment that cannot be committed out of the queue, keeping its files.

        A gap with a ``footage.quarantined`` audit event says where the footage went, so
        nothing disappears silently; a person decides what to do with it.
        """
        target = self.root / "quarantine"
        target.mkdir(exist_ok=True, mode=0o700)
        for path in (
            pending.media_path(self.root),
            pending.thumb_path(self.root),
            pending.manifest_path(self.root),
        ):
            if path.exists():
                os.replace(path, target / path.name)
        fsync_dir(target)
        fsync_dir(self.root)
        start = pending.start
        end = pending.end or pending.start
        self.add_gap(
            pending.camera_id,
            GapInfo(start, end, f"segment quarantined in the spool: {reason}"[:500]),
            audit_action="footage.quarantined",
            audit_details={"segment_id": pending.segment_id, "reason": reason[:500]},
        )
        log.error(
            "spool segment quarantined camera=%s segment=%s reason=%s",
            pending.camera_id,
            pending.segment_id,
            reason,
        )
        return target

    def over_warning(self) -> bool:
        return self.used_bytes() >= WARN_FRACTION * self.max_bytes

    # -- crash recovery -----------------------------------------------------------------------

    def recover(self) -> list[Recovered]:
        """Close every segment a crash left open; report where each camera's footage stopped."""
        recovered: list[Recovered] = []
        for manifest in list(self.manifests()):
            if manifest.state != "open":
                continue
            media = manifest.media_path(self.root)
            stopped_at = (
                datetime.fromtimestamp(media.stat().st_mtime, UTC) if media.exists() else None
            )
            size = truncate_to_complete_fragments(media) if media.exists() else 0
            summary = None
            if size > 0:
                try:
                    summary = summarize(media)
                except IntegrityError as exc:
                    log.error(
                        "spool segment %s unreadable after truncation: %s",
                        manifest.segment_id,
                        exc.message,
                    )
            if size > 0 and (summary is None or not summary.first_is_keyframe):
                # Whole fragments that do not read as footage: keep them for a person.
                self.quarantine(manifest, "unreadable after crash recovery")
                end = manifest.start
            elif summary is None or summary.frames == 0:
                # Not even one complete fragment was written: there is nothing to keep.
                for path in (
                    media,
                    manifest.thumb_path(self.root),
                    manifest.manifest_path(self.root),
                ):
                    path.unlink(missing_ok=True)
                end = manifest.start
            else:
                end = manifest.start + timedelta(seconds=summary.media_duration)
                manifest.with_(
                    state="closed",
                    end=end,
                    media_duration=summary.media_duration,
                    frames=summary.frames,
                    codec=summary.codec,
                    width=summary.width,
                    height=summary.height,
                ).save(self.root)
            lost_until = max(end, stopped_at) if stopped_at else end
            recovered.append(
                Recovered(
                    manifest.camera_id,
                    GapInfo(
                        end, lost_until, "recorder interrupted (crash); in-flight fragment lost"
                    ),
                )
            )
            log.warning(
                "recovered open segment camera=%s segment=%s kept_until=%s",
                manifest.camera_id,
                manifest.segment_id,
                end.isoformat(),
            )
        return recovered
