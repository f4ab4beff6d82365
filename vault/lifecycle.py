"""Segment lifecycle: the commit protocol (DESIGN §5) and reading footage back.

Commit, for one closed segment in the spool, every step idempotent by segment id:

1. if the catalog already has the row, the commit happened: only the spool files remain;
2. hash the plaintext (SHA-256), streamed from the spool file;
3. seal it: a fresh data key and nonce, recorded in the manifest *before* any object is
   written, so a retry after a crash produces the very same object bytes;
4. put the object under its deterministic key with purpose metadata (and the S3 retention
   lock until ``retention_until``), sealed while it streams from the spool file into the
   store (``put_stream``): a segment is never held whole in memory; the thumbnail (a few KB)
   is sealed in memory and put likewise;
5. insert the row (and its run) in one transaction;
6. if an active hold covers the segment, put the store's legal hold on its objects
   (:func:`vault.holds.hold_new_segment`; again on a retry that finds the row);
7. remove the spool files (manifest last).

A crash between 4 and 5 leaves an object without a row only while its manifest is still in
the spool; recovery (``commit_pending``) finishes it before anything else runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from sqlalchemy.engine import Engine

from vault import ledger
from vault.crypto import (
    KeyProvider,
    SealingReader,
    associated_data,
    new_seal,
    open_blob,
    seal_blob,
    sha256_file,
)
from vault.db import unit_of_work
from vault.errors import IntegrityError, InvalidInput, NotFound
from vault.holds import hold_new_segment
from vault.models import (
    COLLECTION_PURPOSE,
    Camera,
    Gap,
    RetentionPolicy,
    Run,
    Segment,
    SegmentState,
)
from vault.pending import PendingGap, PendingSegment, fsync_dir
from vault.store.base import ObjectStore
from vault.timerange import Clock, SystemClock

__all__ = [
    "VaultContext",
    "commit_gap",
    "commit_segment",
    "object_key",
    "open_segment_for_playback",
    "read_segment",
    "read_thumbnail",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaultContext:
    engine: Engine
    store: ObjectStore
    keys: KeyProvider
    clock: Clock = SystemClock()


def object_key(prefix: str, site_id: str, camera_id: str, start: datetime, object_id: str) -> str:
    return f"{prefix}/{site_id}/{camera_id}/{start:%Y/%m/%d}/{object_id}"


def _segment_aad(segment_id: str, camera_id: str, start: datetime, sha256: str) -> bytes:
    return associated_data(segment_id, camera_id, start.isoformat(), sha256)


def _thumb_aad(segment_id: str, camera_id: str, start: datetime, sha256: str) -> bytes:
    return associated_data(f"thumb:{segment_id}", camera_id, start.isoformat(), sha256)


def _remove_spool_files(pending: PendingSegment, spool: Path) -> None:
    for path in (pending.media_path(spool), pending.thumb_path(spool)):
        path.unlink(missing_ok=True)
    # The manifest goes last: while it exists, recovery knows the segment's identity.
    pending.manifest_path(spool).unlink(missing_ok=True)
    fsync_dir(spool)


def _file_version(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def commit_segment(ctx: VaultContext, pending: PendingSegment, spool: Path) -> Segment:
    """Commit one closed segment from the spool into the vault. Safe to call again."""
    if pending.state != "closed" or pending.end is None:
        raise InvalidInput(f"segment {pending.segment_id} is not closed")
    end: datetime = pending.end
    with unit_of_work(ctx.engine) as session:
        existing = session.get(Segment, pending.segment_id)
        camera = session.get(Camera, pending.camera_id)
        if existing is None and camera is None:
            raise NotFound(f"segment {pending.segment_id} names unknown camera")
        policy = session.get(RetentionPolicy, camera.retention_policy_id) if camera else None
    if existing is not None:
        if existing.state == SegmentState.STORED:
            # A crash after the insert may have come before the legal hold (step 6).
            hold_new_segment(ctx, existing)
        _remove_spool_files(pending, spool)
        return existing
    assert camera is not None and policy is not None
    if camera.purpose != COLLECTION_PURPOSE:
        raise InvalidInput(f"camera {camera.id} has purpose {camera.purpose!r}, not 'security'")

    media_path = pending.media_path(spool)
    # Two streamed passes (hash, then seal): the associated data binds the hash, and AES-GCM
    # takes all associated data before the first byte. Both read the spool file through one
    # reused buffer. The closed file must not change in between: a length change fails the
    # seal, and any write (the file's inode, size, mtime and ctime) fails it before the tag,
    # so an object whose plaintext differs from the recorded hash is never completed (I6).
    hashed = _file_version(os.stat(media_path))
    sha256, media_bytes = sha256_file(media_path)
    thumb_path = pending.thumb_path(spool)
    thumb = thumb_path.read_bytes() if thumb_path.exists() else None
    thumb_sha = hashlib.sha256(thumb).hexdigest() if thumb is not None else None

    if pending.seal is None or (thumb is not None and pending.thumb_seal is None):
        pending = pending.with_(
            seal=pending.seal or new_seal(ctx.keys),
            thumb_seal=pending.thumb_seal or (new_seal(ctx.keys) if thumb is not None else None),
        )
        pending.save(spool)
    seal = pending.seal
    assert seal is not None

    retention_until = end + timedelta(days=policy.days)
    key = object_key("segments", camera.site_id, camera.id, pending.start, pending.segment_id)
    metadata = {
        "purpose": COLLECTION_PURPOSE,
        "camera": camera.id,
        "site": camera.site_id,
        "segment-id": pending.segment_id,
        "start": pending.start.isoformat(),
        "end": end.isoformat(),
        "sha256": sha256,
        "key-id": seal.key_id,
        "kind": "native",
    }
    aad = _segment_aad(pending.segment_id, camera.id, pending.start, sha256)
    with media_path.open("rb", buffering=0) as plaintext:

        def unchanged() -> None:
            if _file_version(os.fstat(plaintext.fileno())) != hashed:
                raise IntegrityError(f"spool file {media_path.name} changed while it was sealed")

        sealed = SealingReader(plaintext, media_bytes, seal, aad, ctx.keys, before_tag=unchanged)
        ctx.store.put_stream(key, sealed, sealed.length, metadata, retain_until=retention_until)

    thumb_key = None
    if thumb is not None and thumb_sha is not None and pending.thumb_seal is not None:
        thumb_key = object_key(
            "thumbs", camera.site_id, camera.id, pending.start, pending.segment_id
        )
        thumb_blob = seal_blob(
            thumb,
            pending.thumb_seal,
            _thumb_aad(pending.segment_id, camera.id, pending.start, thumb_sha),
            ctx.keys,
        )
        # A thumbnail is a derived object: labelled so, kept no longer than its source.
        ctx.store.put(
            thumb_key,
            thumb_blob,
            {**metadata, "sha256": thumb_sha, "kind": "derived-thumbnail"},
            retain_until=retention_until,
        )

    now = ctx.clock.now()
    with unit_of_work(ctx.engine) as session:
        if session.get(Run, pending.run_id) is None:
            session.add(
                Run(
                    id=pending.run_id,
                    camera_id=camera.id,
                    started_at=pending.run_started_at,
                    clock_offset_ms=pending.clock_offset_ms,
                    restamped=pending.restamped,
                )
            )
        else:
            run = session.get(Run, pending.run_id)
            assert run is not None
            run.clock_offset_ms = pending.clock_offset_ms
            session.add(run)
        segment = Segment(
            id=pending.segment_id,
            camera_id=camera.id,
            run_id=pending.run_id,
            start=pending.start,
            end=end,
            media_duration=pending.media_duration,
            frames=pending.frames,
            codec=pending.codec,
            width=pending.width,
            height=pending.height,
            bytes=media_bytes,
            sha256=sha256,
            object_key=key,
            key_id=seal.key_id,
            wrapped_dek=seal.wrapped_dek,
            thumb_key=thumb_key,
            thumb_sha256=thumb_sha,
            thumb_wrapped_dek=pending.thumb_seal.wrapped_dek if pending.thumb_seal else None,
            purpose=COLLECTION_PURPOSE,
            retention_until=retention_until,
            created_at=now,
        )
        session.add(segment)
    # After the row is committed: a hold placed meanwhile either sees the row or is seen here.
    hold_new_segment(ctx, segment)
    log.info(
        "segment committed camera=%s segment=%s start=%s end=%s bytes=%d sha256=%s",
        camera.id,
        pending.segment_id,
        pending.start.isoformat(),
        end.isoformat(),
        media_bytes,
        sha256,
    )
    _remove_spool_files(pending, spool)
    return segment


def commit_gap(ctx: VaultContext, gap: PendingGap, spool: Path) -> None:
    """Record a gap (and its audit event, if any) once; then drop its spool file."""
    with unit_of_work(ctx.engine) as session:
        if session.get(Gap, gap.gap_id) is None:
            session.add(
                Gap(
                    id=gap.gap_id,
                    camera_id=gap.camera_id,
                    start=gap.start,
                    end=gap.end,
                    reason=gap.reason[:500],
                    created_at=ctx.clock.now(),
                )
            )
            if gap.audit_action:
                ledger.append(
                    session,
                    at=ctx.clock.now(),
                    actor="system:ingest",
                    role="system",
                    action=gap.audit_action,
                    target=f"camera:{gap.camera_id}",
                    purpose=COLLECTION_PURPOSE,
                    decision="done",
                    reason=gap.reason,
                    details={
                        "start": gap.start.isoformat(),
                        "end": gap.end.isoformat(),
                        **(gap.audit_details or {}),
                    },
                )
    gap.path(spool).unlink(missing_ok=True)


def _open_object(
    ctx: VaultContext, key: str, key_id: str, wrapped: bytes, aad: bytes, sha256: str, what: str
) -> bytes:
    plaintext = open_blob(ctx.store.get(key), key_id, wrapped, aad, ctx.keys)
    if hashlib.sha256(plaintext).hexdigest() != sha256:
        raise IntegrityError(f"{what} does not match its catalog hash")
    return plaintext


def read_segment(ctx: VaultContext, segment: Segment) -> bytes:
    """Fetch, decrypt and authenticate a segment's native MP4; verify its plaintext hash."""
    if segment.wrapped_dek is None:
        raise NotFound(f"segment {segment.id} has been purged")
    aad = _segment_aad(segment.id, segment.camera_id, segment.start, segment.sha256)
    return _open_object(
        ctx, segment.object_key, segment.key_id, segment.wrapped_dek, aad, segment.sha256,
        f"segment {segment.id}",
    )


def open_segment_for_playback(ctx: VaultContext, segment: Segment) -> bytes:
    """Fetch, decrypt and authenticate a segment's native MP4 for playback (the hot path).

    Unlike :func:`read_segment` this does not re-hash the plaintext, and need not: the
    AES-256-GCM tag is checked over the whole ciphertext before any plaintext is returned, and
    the associated data it authenticates binds this row's segment id, camera, start and
    plaintext SHA-256. A changed, truncated or swapped object therefore fails here exactly as
    in :func:`read_segment` (:class:`IntegrityError`). What a re-hash adds is protection
    against someone who holds the key-encryption key *and* can write the store — they could
    seal other plaintext under the same associated data — and against a commit bug that hashed
    other bytes than it sealed. Neither is a playback concern: ``cctv-vault check``, the
    scheduler's integrity sweep and evidence exports use :func:`read_segment`, which re-hashes.
    The saving is what P6 needs: SHA-256 of a 1-minute 1080p segment (~30 MB) costs ~25 ms,
    half of the 50 ms time-to-first-byte budget (bench/p6_playback_ttfb.py measures both).

    Raises :class:`NotFound` if the segment was purged (or its object is gone),
    :class:`IntegrityError` if it fails authentication, :class:`Unavailable` if the store
    cannot be reached.
    """
    if segment.wrapped_dek is None:
        raise NotFound(f"segment {segment.id} has been purged")
    aad = _segment_aad(segment.id, segment.camera_id, segment.start, segment.sha256)
    blob = ctx.store.get(segment.object_key)
    # open_blob only compares and slices its argument: through a memoryview the ciphertext is
    # handed to AES-GCM without first copying ~30 MB into a new bytes object (measured: the
    # copy, mostly page faults on fresh memory, cost 13-19 ms of the P6 budget).
    view = cast(bytes, memoryview(blob))  # typed bytes in open_blob; used only as a buffer
    return open_blob(view, segment.key_id, segment.wrapped_dek, aad, ctx.keys)


def read_thumbnail(ctx: VaultContext, segment: Segment) -> bytes:
    """Fetch and decrypt the segment's derived thumbnail (a small JPEG)."""
    if segment.thumb_key is None or segment.thumb_wrapped_dek is None or not segment.thumb_sha256:
        raise NotFound(f"segment {segment.id} has no thumbnail")
    aad = _thumb_aad(segment.id, segment.camera_id, segment.start, segment.thumb_sha256)
    return _open_object(
        ctx, segment.thumb_key, segment.key_id, segment.thumb_wrapped_dek, aad,
        segment.thumb_sha256, f"thumbnail of segment {segment.id}",
    )
