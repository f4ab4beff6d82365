"""The segmenter: a pure state machine from packet metadata to recording actions (DESIGN §5).

It never touches packets' bytes, files or clocks. The recorder feeds it one
:class:`PacketMeta` per received packet and executes the actions it returns, in order:

* a run starts at the first keyframe; its wall-clock anchor is that packet's receive time, and
  every later instant in the run is ``anchor + media offset`` (so consecutive segments of a run
  share their boundaries exactly: no hole, no overlap);
* a segment is cut at the first keyframe at or after the target duration;
* timestamps are rebased to zero in each segment;
* a non-increasing DTS is dropped; a burst of them (a camera with stuck or missing timestamps)
  switches the stream to receive-clock stamping with a health warning, rather than dropping it;
* a jump in media time, or an interruption reported by the recorder, ends the run; the next run
  starts with a :class:`GapInfo` covering the footage that was not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction

from vault.models import MAX_SEGMENT_SECONDS

__all__ = [
    "Action",
    "CloseSegment",
    "DropPacket",
    "GapInfo",
    "HealthWarning",
    "OpenSegment",
    "PacketMeta",
    "Segmenter",
    "SegmenterConfig",
    "StartRun",
    "WritePacket",
]


@dataclass(frozen=True, slots=True)
class PacketMeta:
    pts: int | None
    dts: int | None
    keyframe: bool
    size: int
    duration: int | None
    received: datetime  # wall clock (UTC) when the packet arrived


@dataclass(frozen=True, slots=True)
class GapInfo:
    start: datetime
    end: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class StartRun:
    wall_start: datetime
    restamped: bool
    gap: GapInfo | None


@dataclass(frozen=True, slots=True)
class OpenSegment:
    wall_start: datetime


@dataclass(frozen=True, slots=True)
class WritePacket:
    pts: int
    dts: int


@dataclass(frozen=True, slots=True)
class CloseSegment:
    wall_end: datetime
    media_duration: float
    frames: int
    # Host clock minus media-derived wall clock at the last packet: how far the camera's
    # media clock has drifted from ours during the run.
    clock_offset_ms: float


@dataclass(frozen=True, slots=True)
class DropPacket:
    reason: str


@dataclass(frozen=True, slots=True)
class HealthWarning:
    code: str
    message: str


Action = StartRun | OpenSegment | WritePacket | CloseSegment | DropPacket | HealthWarning


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    target_seconds: float = 60.0
    max_gop_seconds: float = 10.0
    # A forward or backward jump of media time beyond this ends the run (a discontinuity).
    jump_seconds: float = 10.0
    # This many bad timestamps in a row switch the stream to receive-clock stamping.
    restamp_after: int = 8

    def __post_init__(self) -> None:
        if not 2 <= self.target_seconds <= 300:
            raise ValueError("target_seconds must be within [2, 300]")


@dataclass(slots=True)
class _Run:
    first_dts: int
    wall_start: datetime
    last_dts: int
    last_duration: int
    last_received: datetime
    last_key_dts: int
    gop_warned: bool = False


@dataclass(slots=True)
class _Segment:
    first_dts: int
    frames: int = 0


@dataclass(slots=True)
class _State:
    run: _Run | None = None
    segment: _Segment | None = None
    pending_gap: GapInfo | None = None
    bad_streak: int = 0
    restamp: bool = False
    restamp_warned: bool = False
    dropped: dict[str, int] = field(default_factory=dict)


class Segmenter:
    def __init__(
        self,
        time_base: Fraction,
        config: SegmenterConfig | None = None,
        *,
        pending_gap: GapInfo | None = None,
    ) -> None:
        """``pending_gap`` carries an outage over from a previous connection or process."""
        if time_base <= 0:
            raise ValueError("time_base must be positive")
        self.time_base = time_base
        self.config = config or SegmenterConfig()
        self._target = self._ticks(self.config.target_seconds)
        self._max_gop = self._ticks(self.config.max_gop_seconds)
        self._jump = self._ticks(self.config.jump_seconds)
        self._max_span = self._ticks(MAX_SEGMENT_SECONDS)
        self._s = _State(pending_gap=pending_gap)

    # -- public -------------------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        return self._s.segment is not None

    @property
    def restamped(self) -> bool:
        return self._s.restamp

    @property
    def pending_gap(self) -> GapInfo | None:
        """The outage not yet closed by a new run (its ``end`` is not final)."""
        return self._s.pending_gap

    def note_outage(self, at: datetime, reason: str) -> None:
        """The source failed before any run started: the gap starts now, if none is open."""
        if self._s.run is None and self._s.pending_gap is None:
            self._s.pending_gap = GapInfo(start=at, end=at, reason=reason)

    def feed(self, pkt: PacketMeta) -> list[Action]:
        s = self._s
        actions: list[Action] = []
        ts = self._timestamp(pkt, actions)
        if ts is None:
            return actions
        run = s.run
        if run is not None and not s.restamp and abs(ts - run.last_dts) > self._jump:
            actions += self._end_run(
                f"media time jumped {float((ts - run.last_dts) * self.time_base):+.3f} s"
            )
            run = None
        if run is None:
            if not pkt.keyframe:
                actions.append(self._drop("waiting for keyframe"))
                return actions
            run = self._start_run(ts, pkt, actions)
        elif pkt.keyframe:
            gop = ts - run.last_key_dts
            if gop > self._max_gop and not run.gop_warned:
                actions.append(self._long_gop(gop))
            run.last_key_dts = ts
            run.gop_warned = False
            seg = s.segment
            if seg is None or ts - seg.first_dts >= self._target:
                if seg is not None:
                    actions.append(self._close(ts, run))
                s.segment = _Segment(first_dts=ts)
                actions.append(OpenSegment(self._wall(run, ts)))
        else:
            seg = s.segment
            if seg is not None and ts - seg.first_dts >= self._max_span:
                # No keyframe to cut at for so long that the segment would outgrow what range
                # queries assume: end the run (a gap) and wait for the next keyframe.
                actions += self._end_run(
                    f"no keyframe for {float((ts - run.last_key_dts) * self.time_base):.0f} s; "
                    "segment span cap reached"
                )
                actions.append(self._drop("waiting for keyframe"))
                return actions
            if ts - run.last_key_dts > self._max_gop and not run.gop_warned:
                run.gop_warned = True
                actions.append(self._long_gop(ts - run.last_key_dts))
        seg = s.segment
        assert seg is not None
        pts = ts if s.restamp or pkt.pts is None else max(pkt.pts, ts)
        actions.append(WritePacket(pts=pts - seg.first_dts, dts=ts - seg.first_dts))
        seg.frames += 1
        if pkt.duration and pkt.duration > 0:
            run.last_duration = pkt.duration
        elif ts > run.last_dts:
            # No duration from the container: the previous frame interval is the best guess.
            run.last_duration = ts - run.last_dts
        run.last_dts = ts
        run.last_received = pkt.received
        return actions

    def interrupt(self, reason: str) -> list[Action]:
        """The source went away (error, timeout, reconnect): close the segment and end the run.

        The next run's :class:`StartRun` carries the gap, from this run's end to its start.
        """
        return self._end_run(reason)

    def finish(self) -> list[Action]:
        """Orderly stop: close the open segment; no gap is pending afterwards."""
        actions = self._end_run("stopped")
        self._s.pending_gap = None
        return actions

    # -- internals ----------------------------------------------------------------------------

    def _ticks(self, seconds: float) -> int:
        return int(Fraction(seconds).limit_denominator(1_000_000) / self.time_base)

    def _wall(self, run: _Run, ts: int) -> datetime:
        return run.wall_start + timedelta(seconds=float((ts - run.first_dts) * self.time_base))

    def _drop(self, reason: str) -> DropPacket:
        self._s.dropped[reason] = self._s.dropped.get(reason, 0) + 1
        return DropPacket(reason)

    def _long_gop(self, gop_ticks: int) -> HealthWarning:
        seconds = float(gop_ticks * self.time_base)
        return HealthWarning(
            "long-gop",
            f"no keyframe for {seconds:.1f} s (cap {self.config.max_gop_seconds:g} s): "
            "segments grow beyond their target",
        )

    def _timestamp(self, pkt: PacketMeta, actions: list[Action]) -> int | None:
        s = self._s
        run = s.run
        if s.restamp:
            if run is None:
                return 0
            ts = run.first_dts + self._ticks((pkt.received - run.wall_start).total_seconds())
            return max(ts, run.last_dts + 1)
        raw = pkt.dts if pkt.dts is not None else pkt.pts
        bad = raw is None or (
            run is not None and raw <= run.last_dts and run.last_dts - raw <= self._jump
        )
        if not bad:
            s.bad_streak = 0
            return raw
        s.bad_streak += 1
        if s.bad_streak < self.config.restamp_after:
            actions.append(self._drop("missing timestamp" if raw is None else "non-increasing dts"))
            return None
        # The camera's timestamps are unusable: keep its footage, stamped by our clock.
        s.restamp = True
        s.bad_streak = 0
        actions.append(
            HealthWarning(
                "restamped",
                "camera timestamps are missing or stuck; re-stamping from the receive clock",
            )
        )
        if run is not None:
            actions += self._end_run("camera timestamps unusable; switched to receive clock")
        return 0

    def _start_run(self, ts: int, pkt: PacketMeta, actions: list[Action]) -> _Run:
        s = self._s
        gap = s.pending_gap
        anchor = pkt.received
        if gap is not None:
            # Never start before the previous run ended: one camera's wall timeline has no
            # overlap even when media time ran ahead of the host clock (e.g. a file read fast).
            anchor = max(gap.start, pkt.received)
            gap = GapInfo(start=gap.start, end=anchor, reason=gap.reason)
        s.pending_gap = None
        run = _Run(
            first_dts=ts,
            wall_start=anchor,
            last_dts=ts,
            last_duration=0,
            last_received=pkt.received,
            last_key_dts=ts,
        )
        s.run = run
        s.segment = _Segment(first_dts=ts)
        actions.append(StartRun(wall_start=anchor, restamped=s.restamp, gap=gap))
        actions.append(OpenSegment(anchor))
        return run

    def _close(self, end_ts: int, run: _Run) -> CloseSegment:
        seg = self._s.segment
        assert seg is not None
        wall_end = self._wall(run, end_ts)
        drift = (run.last_received - self._wall(run, run.last_dts)).total_seconds() * 1000
        self._s.segment = None
        return CloseSegment(
            wall_end=wall_end,
            media_duration=float((end_ts - seg.first_dts) * self.time_base),
            frames=seg.frames,
            clock_offset_ms=round(drift, 3),
        )

    def _end_run(self, reason: str) -> list[Action]:
        s = self._s
        run = s.run
        if run is None:
            return []
        actions: list[Action] = []
        end_ts = run.last_dts + (run.last_duration or 1)
        run_end = self._wall(run, end_ts)
        if s.segment is not None:
            actions.append(self._close(end_ts, run))
        s.run = None
        s.segment = None
        s.pending_gap = GapInfo(start=run_end, end=run_end, reason=reason)
        return actions
