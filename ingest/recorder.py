"""Per-camera recorders and the committer: the imperative shell around the segmenter.

Each camera records in its own thread: open the source, feed packet metadata to the pure
segmenter, execute its actions (open/write/close fragmented MP4 in the spool, gaps, health),
reconnect with exponential backoff and jitter when the source fails. One failing camera never
stops another. The committer thread moves closed segments and gaps from the spool into the
vault and retries while the store or catalog is down.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from ingest.fmp4 import FragmentWriter
from ingest.segmenter import (
    CloseSegment,
    DropPacket,
    GapInfo,
    HealthWarning,
    OpenSegment,
    PacketMeta,
    Segmenter,
    SegmenterConfig,
    StartRun,
    WritePacket,
)
from ingest.sources import (
    SourceError,
    authenticated_url,
    open_source,
    read_packets,
    redact_url,
    resolve_credentials,
)
from ingest.spool import WARN_FRACTION, Spool
from ingest.thumbnail import thumbnail_jpeg
from vault.catalog import record_status
from vault.config import CameraConfig, RecordingConfig
from vault.db import unit_of_work
from vault.errors import Unavailable, VaultError
from vault.lifecycle import VaultContext, commit_gap, commit_segment
from vault.models import HealthState
from vault.pending import PendingSegment, atomic_write
from vault.timerange import Clock

__all__ = ["Backoff", "CameraRecorder", "Committer", "HealthBoard", "source_ref"]

log = logging.getLogger(__name__)


class SourceSession(Protocol):
    @property
    def stream(self) -> Any: ...

    def packets(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class _NetworkSession:
    def __init__(self, container: Any) -> None:
        self._container = container
        self._stream = next(s for s in container.streams if s.type == "video")

    @property
    def stream(self) -> Any:
        return self._stream

    def packets(self) -> Iterator[Any]:
        return read_packets(self._container)

    def close(self) -> None:
        self._container.close()


def source_ref(camera: CameraConfig) -> str:
    """What the catalog and logs may say about a source: never credentials (I9)."""
    if camera.source.kind == "synthetic":
        return f"synthetic:{camera.id}"
    return redact_url(camera.source.url or "")


@dataclass
class Backoff:
    """Exponential backoff with full jitter between ``low`` and ``high`` seconds."""

    low: float
    high: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.high, self.low * (2**self.attempt))
        self.attempt += 1
        return self.rng.uniform(self.low, max(self.low, ceiling))

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class _Health:
    state: str
    detail: str
    since: datetime
    last_segment_end: datetime | None = None
    dirty: bool = True


class HealthBoard:
    """Per-camera health, kept in memory and flushed to the catalog by the committer."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cameras: dict[str, _Health] = {}

    def set(self, camera_id: str, state: HealthState, detail: str = "") -> None:
        with self._lock:
            current = self._cameras.get(camera_id)
            if current and current.state == state and current.detail == detail:
                return
            since = self._clock.now()
            last = current.last_segment_end if current else None
            self._cameras[camera_id] = _Health(state, detail, since, last)
        log.info("camera health camera=%s state=%s detail=%s", camera_id, state, detail)

    def segment_closed(self, camera_id: str, end: datetime) -> None:
        with self._lock:
            current = self._cameras.get(camera_id)
            if current is not None:
                current.last_segment_end = end
                current.dirty = True

    def get(self, camera_id: str) -> tuple[str, str] | None:
        with self._lock:
            h = self._cameras.get(camera_id)
            return (h.state, h.detail) if h else None

    def snapshot(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            return {k: (v.state, v.detail) for k, v in self._cameras.items()}

    def flush(self, ctx: VaultContext) -> None:
        with self._lock:
            dirty = {k: v for k, v in self._cameras.items() if v.dirty}
        if not dirty:
            return
        with unit_of_work(ctx.engine) as session:
            for camera_id, h in dirty.items():
                record_status(session, camera_id, h.state, h.detail, h.since, h.last_segment_end)
        with self._lock:
            for camera_id, h in dirty.items():
                if self._cameras.get(camera_id) is h:
                    h.dirty = False


class Committer(threading.Thread):
    """Commits whatever the spool holds, oldest first; waits and retries while peers are down."""

    def __init__(
        self,
        ctx: VaultContext,
        spool: Spool,
        health: HealthBoard,
        *,
        retry_low: float = 1.0,
        retry_high: float = 30.0,
    ) -> None:
        super().__init__(name="committer", daemon=True)
        self.ctx = ctx
        self.spool = spool
        self.health = health
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._backoff = Backoff(retry_low, retry_high)
        self.committed = 0
        self.store_ok = True
        self.spool_warning = False

    def run(self) -> None:
        while True:
            self.wake.clear()
            try:
                self.drain()
                self._backoff.reset()
                self.store_ok = True
                delay = 5.0
            except VaultError as exc:
                self.store_ok = False
                delay = self._backoff.next_delay()
                log.warning("commit deferred (%s): %s; retry in %.1f s", exc.kind, exc, delay)
            except Exception:  # a bug must not stop recording: footage stays in the spool
                log.exception("committer failed; retrying")
                delay = self._backoff.next_delay()
            if self.stopping.is_set():
                return
            self.wake.wait(delay)

    def drain(self) -> int:
        """Commit everything closed in the spool; return how many segments were committed."""
        for dropped in self.spool.enforce_bound():
            self.health.set(dropped.camera_id, HealthState.DEGRADED, "spool full: footage dropped")
        warning = self.spool.over_warning()
        if warning and not self.spool_warning:
            log.warning(
                "spool above %d%% of its bound (%d bytes): the store or catalog is not keeping up",
                int(WARN_FRACTION * 100),
                self.spool.max_bytes,
            )
        self.spool_warning = warning
        count = 0
        for gap in self.spool.gaps():
            commit_gap(self.ctx, gap, self.spool.root)
        for pending in self.spool.closed():
            try:
                commit_segment(self.ctx, pending, self.spool.root)
            except Unavailable:
                raise  # a peer is down: everything waits, in order, and is retried
            except (VaultError, OSError) as exc:
                # This one segment cannot be committed (missing file, unknown camera, ...):
                # set it aside for a person instead of blocking every segment behind it.
                self.spool.quarantine(pending, f"{type(exc).__name__}: {exc}")
                self.health.set(
                    pending.camera_id, HealthState.DEGRADED, "a segment was quarantined"
                )
                continue
            count += 1
            self.committed += 1
        # Quarantines above wrote gaps of their own: record them in this pass too.
        for gap in self.spool.gaps():
            commit_gap(self.ctx, gap, self.spool.root)
        self.health.flush(self.ctx)
        return count

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


class CameraRecorder(threading.Thread):
    def __init__(
        self,
        camera: CameraConfig,
        recording: RecordingConfig,
        target_seconds: float,
        spool: Spool,
        committer: Committer,
        health: HealthBoard,
        clock: Clock,
        *,
        cache_dir: Path,
        initial_gap: GapInfo | None = None,
        environ: dict[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name=f"camera-{camera.id}", daemon=True)
        self.camera = camera
        self.recording = recording
        self.config = SegmenterConfig(
            target_seconds=target_seconds,
            max_gop_seconds=recording.max_gop_seconds,
            jump_seconds=max(10.0, 2 * recording.max_gop_seconds),
        )
        self.spool = spool
        self.committer = committer
        self.health = health
        self.clock = clock
        self.cache_dir = cache_dir
        self.stopping = threading.Event()
        self._pending_gap = initial_gap
        self._environ = environ
        self._backoff = Backoff(
            recording.reconnect_min_s, recording.reconnect_max_s, rng or random.Random()
        )
        self._writer: FragmentWriter | None = None
        self._segment: PendingSegment | None = None
        self._run_id = ""
        self._run_started: datetime | None = None
        self._restamped = False
        self._stream: Any = None
        self._warnings: list[str] = []
        self.segments_closed = 0
        self._failed: str | None = None
        self._warned = False

    # -- thread -------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        cam = self.camera
        down_since: datetime | None = None
        while not self.stopping.is_set():
            reason = "end of stream"
            segmenter: Segmenter | None = None
            session: SourceSession | None = None
            announced = False
            self._warned = False  # each connection re-detects its stream's problems
            try:
                session = self._open()
                self._stream = session.stream
                segmenter = Segmenter(
                    Fraction(session.stream.time_base), self.config, pending_gap=self._pending_gap
                )
                for packet in session.packets():
                    if self.stopping.is_set():
                        reason = "stopped"
                        break
                    meta = PacketMeta(
                        pts=packet.pts,
                        dts=packet.dts,
                        keyframe=bool(packet.is_keyframe),
                        size=packet.size,
                        duration=packet.duration,
                        received=self.clock.now(),
                    )
                    for action in segmenter.feed(meta):
                        self._execute(action, packet)
                    if not announced and segmenter.recording:
                        # Once per connection, not per packet: this loop is the hot path.
                        announced = True
                        down_since = None
                        self._backoff.reset()
                        if not self._warned:
                            self.health.set(cam.id, HealthState.RECORDING, "")
            except SourceError as exc:
                reason = f"source {exc.reason}: {exc.message}"
            except Exception as exc:  # keep the other cameras and this thread alive
                log.exception("camera %s recorder failed", cam.id)
                reason = f"recorder error: {type(exc).__name__}"
            finally:
                if segmenter is not None:
                    orderly = reason == "stopped" or (
                        cam.source.kind == "file" and reason == "end of stream"
                    )
                    for action in (
                        segmenter.finish() if orderly else segmenter.interrupt(reason)
                    ):
                        self._execute(action, None)
                    self._pending_gap = segmenter.pending_gap
                self._abort_writer()
                if session is not None:
                    try:
                        session.close()
                    except Exception:  # closing a broken stream may fail; nothing to keep
                        log.debug("closing source of %s failed", cam.id, exc_info=True)
            if self.stopping.is_set():
                break
            if cam.source.kind == "file":
                # A file is read once: re-reading it after an error would record it twice.
                if reason != "end of stream":
                    self._failed = reason
                    self.health.set(cam.id, HealthState.OFFLINE, reason[:200])
                break
            now = self.clock.now()
            if self._pending_gap is None:
                self._pending_gap = GapInfo(now, now, reason)
            if down_since is None:
                down_since = now
            offline = (now - down_since).total_seconds() >= self.recording.offline_after_s
            self.health.set(
                cam.id,
                HealthState.OFFLINE if offline else HealthState.RECONNECTING,
                reason[:200],
            )
            delay = self._backoff.next_delay()
            log.warning(
                "camera %s source lost (%s); reconnect in %.1f s", cam.id, reason[:200], delay
            )
            self.stopping.wait(delay)
        self._finish()

    def _finish(self) -> None:
        gap = self._pending_gap
        if gap is not None and gap.reason != "stopped":
            # The camera was still down when we stopped: record the outage up to now.
            self.spool.add_gap(self.camera.id, GapInfo(gap.start, self.clock.now(), gap.reason))
            self._pending_gap = None
        if self._failed is None:
            self.health.set(self.camera.id, HealthState.STOPPED, "")
        self.committer.wake.set()

    # -- source -------------------------------------------------------------------------------

    def _open(self) -> SourceSession:
        src = self.camera.source
        if src.kind == "synthetic":
            # Imported here: the simulator draws with OpenCV and NumPy, which a recorder of
            # real cameras never needs (their import is ~0.13 s of CPU per process start).
            from ingest import simulate

            clip = simulate.render_clip(
                self.cache_dir / f"synthetic-{self.camera.id}.mkv",
                camera_name=self.camera.name,
                width=src.width,
                height=src.height,
                fps=src.fps,
                seconds=src.loop_seconds,
                gop_seconds=src.gop_seconds,
            )
            return simulate.SyntheticSource(clip)
        assert src.url is not None
        creds = resolve_credentials(
            src.credentials_env, src.credentials_file, self._environ or dict(os.environ)
        )
        container = open_source(
            authenticated_url(src.url, creds),
            kind=src.kind,
            open_timeout_s=src.open_timeout_s,
            read_timeout_s=src.read_timeout_s,
        )
        return _NetworkSession(container)

    # -- actions ------------------------------------------------------------------------------

    def _execute(self, action: object, packet: Any) -> None:
        cam = self.camera
        if isinstance(action, WritePacket):
            assert self._writer is not None and packet is not None
            self._writer.write(packet, action.pts, action.dts)
        elif isinstance(action, StartRun):
            self._run_id = str(uuid.uuid4())
            self._run_started = action.wall_start
            self._restamped = action.restamped
            if action.gap is not None:
                self.spool.add_gap(cam.id, action.gap)
                self.committer.wake.set()
        elif isinstance(action, OpenSegment):
            self._open_segment(action, packet)
        elif isinstance(action, CloseSegment):
            self._close_segment(action)
        elif isinstance(action, HealthWarning):
            self._warnings.append(action.code)
            self._warned = True
            log.warning("camera %s: %s", cam.id, action.message)
            self.health.set(cam.id, HealthState.DEGRADED, action.message)
        elif isinstance(action, DropPacket):
            log.debug("camera %s dropped a packet: %s", cam.id, action.reason)

    def _open_segment(self, action: OpenSegment, packet: Any) -> None:
        assert self._run_started is not None
        stream = self._stream
        ctx = stream.codec_context
        pending = PendingSegment(
            segment_id=str(uuid.uuid4()),
            camera_id=self.camera.id,
            run_id=self._run_id,
            run_started_at=self._run_started,
            restamped=self._restamped,
            start=action.wall_start,
            codec=str(ctx.name),
            width=int(ctx.width or 0),
            height=int(ctx.height or 0),
        )
        pending.save(self.spool.root)
        self._segment = pending
        self._writer = FragmentWriter(pending.media_path(self.spool.root), stream)
        if packet is not None:
            try:
                jpeg = thumbnail_jpeg(packet, stream)
                atomic_write(pending.thumb_path(self.spool.root), jpeg)
            except VaultError as exc:
                log.warning("camera %s: no thumbnail for segment: %s", self.camera.id, exc)

    def _close_segment(self, action: CloseSegment) -> None:
        writer, pending = self._writer, self._segment
        self._writer, self._segment = None, None
        if writer is None or pending is None:
            return
        writer.close()
        closed = pending.with_(
            state="closed",
            end=action.wall_end,
            media_duration=action.media_duration,
            frames=action.frames,
            clock_offset_ms=action.clock_offset_ms,
            warnings=tuple(sorted(set(self._warnings))),
        )
        self._warnings.clear()
        if action.frames == 0 or action.wall_end <= closed.start:
            self._discard(closed)
            return
        closed.save(self.spool.root)
        self.segments_closed += 1
        self.health.segment_closed(self.camera.id, action.wall_end)
        self.committer.wake.set()

    def _discard(self, pending: PendingSegment) -> None:
        for path in (
            pending.media_path(self.spool.root),
            pending.thumb_path(self.spool.root),
            pending.manifest_path(self.spool.root),
        ):
            path.unlink(missing_ok=True)

    def _abort_writer(self) -> None:
        """A segment still open here was not closed by the segmenter: keep what is whole."""
        if self._writer is not None and self._segment is not None:
            try:
                self._writer.close()
            except Exception:  # the spool recovery will truncate it to whole fragments
                log.warning("camera %s: writer close failed", self.camera.id, exc_info=True)
            self._writer = None
            self._segment = None

