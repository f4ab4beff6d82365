"""Table tests of the pure segmenter: cuts, rebasing, runs, gaps, bad timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from ingest.segmenter import (
    Action,
    CloseSegment,
    DropPacket,
    HealthWarning,
    OpenSegment,
    PacketMeta,
    Segmenter,
    SegmenterConfig,
    StartRun,
    WritePacket,
)

TB = Fraction(1, 90_000)
FPS = 15
TICK = 90_000 // FPS
T0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


def packets(
    seconds: float, *, gop_s: float = 1.0, start_dts: int = 0, t0: datetime = T0
) -> list[PacketMeta]:
    n = int(seconds * FPS)
    gop = int(gop_s * FPS)
    return [
        PacketMeta(
            pts=start_dts + i * TICK,
            dts=start_dts + i * TICK,
            keyframe=i % gop == 0,
            size=1000,
            duration=TICK,
            received=t0 + timedelta(seconds=i / FPS),
        )
        for i in range(n)
    ]


def run(seg: Segmenter, pkts: list[PacketMeta]) -> list[Action]:
    out: list[Action] = []
    for p in pkts:
        out += seg.feed(p)
    return out


def of(actions: list[Action], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def test_cuts_at_first_keyframe_at_or_after_target() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4))
    acts = run(seg, packets(20, gop_s=1.6)) + seg.finish()
    opens, closes = of(acts, OpenSegment), of(acts, CloseSegment)
    assert len(opens) == len(closes) == 5
    # keyframes every 1.6 s: the first at or after 4 s is 4.8 s
    assert [c.media_duration for c in closes[:-1]] == [4.8, 4.8, 4.8, 4.8]
    # boundaries shared exactly: each segment ends where the next starts
    for closed, nxt in zip(closes, opens[1:], strict=False):
        assert closed.wall_end == nxt.wall_start
    assert opens[0].wall_start == T0
    assert sum(c.frames for c in closes) == 20 * FPS


def test_each_segment_is_rebased_to_zero_and_starts_on_a_keyframe() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=2))
    pkts = packets(7, start_dts=123_456_789)
    acts: list[tuple[PacketMeta, Action]] = []
    for p in pkts:
        acts += [(p, a) for a in seg.feed(p)]
    first_after_open = []
    expect_first = False
    for p, a in acts:
        if isinstance(a, OpenSegment):
            expect_first = True
        elif isinstance(a, WritePacket) and expect_first:
            first_after_open.append((p, a))
            expect_first = False
    assert len(first_after_open) == 4
    for p, w in first_after_open:
        assert p.keyframe
        assert (w.pts, w.dts) == (0, 0)


def test_waits_for_first_keyframe() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4))
    pkts = packets(3)[5:]  # starts mid-GOP
    acts = run(seg, pkts)
    assert of(acts, DropPacket)[0].reason == "waiting for keyframe"
    assert len(of(acts, DropPacket)) == 10  # until the keyframe at 1 s
    start = of(acts, StartRun)[0]
    assert start.wall_start == pkts[10].received and start.gap is None


def test_isolated_non_increasing_dts_is_dropped() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4))
    pkts = packets(2)
    dup = PacketMeta(pkts[5].pts, pkts[5].dts, False, 10, TICK, pkts[5].received)
    acts = run(seg, [*pkts[:6], dup, *pkts[6:]])
    assert [d.reason for d in of(acts, DropPacket)] == ["non-increasing dts"]
    dts = [w.dts for w in of(acts, WritePacket)]
    assert dts == sorted(set(dts))


def test_time_jump_ends_the_run_with_a_gap() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4, jump_seconds=5))
    first = packets(3)
    later_wall = T0 + timedelta(seconds=60)
    second = packets(3, start_dts=3600 * 90_000, t0=later_wall)
    acts = run(seg, first + second)
    starts = of(acts, StartRun)
    assert len(starts) == 2
    gap = starts[1].gap
    assert gap is not None and "jumped" in gap.reason
    assert gap.start == T0 + timedelta(seconds=3)  # end of the first run's last frame
    assert gap.end == later_wall


def test_interrupt_then_resume_records_gap_from_run_end_to_new_start() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4))
    acts = run(seg, packets(5))
    acts += seg.interrupt("source error: timeout")
    assert isinstance(acts[-1], CloseSegment)
    assert not seg.recording
    resume = T0 + timedelta(seconds=25)
    acts2 = run(seg, packets(2, t0=resume))  # camera restarts its timestamps at 0
    start = of(acts2, StartRun)[0]
    assert start.gap is not None
    assert (start.gap.start, start.gap.end) == (T0 + timedelta(seconds=5), resume)
    assert start.gap.reason == "source error: timeout"


def test_stuck_timestamps_switch_to_receive_clock() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=2, restamp_after=4))
    pkts = [
        PacketMeta(pts=5, dts=5, keyframe=i % 15 == 0, size=10, duration=None,
                   received=T0 + timedelta(seconds=i / FPS))
        for i in range(75)
    ]
    acts = run(seg, pkts) + seg.finish()
    warnings = of(acts, HealthWarning)
    assert [w.code for w in warnings] == ["restamped"]
    assert seg.restamped
    writes = of(acts, WritePacket)
    assert len(writes) > 50  # footage kept, not dropped
    closes = of(acts, CloseSegment)
    assert closes and all(c.media_duration > 0 for c in closes)
    starts = of(acts, StartRun)
    assert starts[-1].restamped


def test_missing_timestamps_from_the_start_are_restamped() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=2, restamp_after=3))
    pkts = [
        PacketMeta(pts=None, dts=None, keyframe=i % 15 == 0, size=10, duration=None,
                   received=T0 + timedelta(seconds=i / FPS))
        for i in range(60)
    ]
    acts = run(seg, pkts)
    assert of(acts, StartRun)[0].restamped
    dts = [w.dts for w in of(acts, WritePacket)]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False) if b != 0)


def test_long_gop_warns_once_per_gop() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4, max_gop_seconds=2))
    acts = run(seg, packets(12, gop_s=5))
    warnings = [w for w in of(acts, HealthWarning) if w.code == "long-gop"]
    assert len(warnings) == 2  # one per GOP that overran the cap (0-5, 5-10 s; not 10-12)
    # segments still start on keyframes: durations are whole GOPs
    assert [c.media_duration for c in of(acts, CloseSegment)] == [5.0, 5.0]


def test_finish_leaves_no_pending_gap() -> None:
    seg = Segmenter(TB, SegmenterConfig(target_seconds=4))
    run(seg, packets(3))
    seg.finish()
    acts = run(seg, packets(2, t0=T0 + timedelta(minutes=5)))
    assert of(acts, StartRun)[0].gap is None


@pytest.mark.parametrize("target", [1.0, 301.0])
def test_target_bounds(target: float) -> None:
    with pytest.raises(ValueError, match="target_seconds"):
        SegmenterConfig(target_seconds=target)


def test_a_stream_without_keyframes_ends_the_run_at_the_span_cap() -> None:
    from vault.models import MAX_SEGMENT_SECONDS

    seg = Segmenter(TB, SegmenterConfig(target_seconds=60, max_gop_seconds=2))
    # One keyframe, then none for longer than any segment may span.
    acts = run(seg, packets(MAX_SEGMENT_SECONDS + 30, gop_s=100_000))
    closes = of(acts, CloseSegment)
    assert len(closes) == 1
    assert closes[0].media_duration <= MAX_SEGMENT_SECONDS
    assert not seg.recording
    assert seg.pending_gap is not None and "span cap" in seg.pending_gap.reason
    assert of(acts, DropPacket)[-1].reason == "waiting for keyframe"
