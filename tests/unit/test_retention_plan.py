"""The pure purge plan (vault.retention.plan): rules R1-R3, table-tested, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vault.errors import InvalidInput
from vault.retention import DueSegment, HoldScope, PurgePlan, plan
from vault.timerange import TimeRange

NOW = datetime(2027, 3, 1, 2, 30, tzinfo=UTC)
T = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)  # footage time
MIN = timedelta(minutes=1)


def seg(
    sid: str,
    camera: str = "cam-a",
    minute: int = 0,
    *,
    until: datetime = NOW,
    length: timedelta = MIN,
    size: int = 100,
) -> DueSegment:
    start = T + minute * MIN
    return DueSegment(sid, camera, TimeRange(start, start + length), until, size)


def hold(
    hid: str, cameras: set[str], first: int, last: int, kind: str = "legal"
) -> HoldScope:
    """A hold over minutes [first, last) of footage time."""
    return HoldScope(hid, kind, frozenset(cameras), TimeRange(T + first * MIN, T + last * MIN))


def ids(segments: tuple[DueSegment, ...]) -> list[str]:
    return [s.id for s in segments]


def summary(p: PurgePlan) -> tuple[list[str], dict[str, list[str]], list[str]]:
    return ids(p.to_purge), {h.hold.id: ids(h.segments) for h in p.held}, ids(p.not_due)


CASES: list[tuple[str, list[DueSegment], list[HoldScope], tuple[object, ...]]] = [
    ("nothing due", [], [], ([], {}, [])),
    ("due without holds goes", [seg("a"), seg("b", minute=1)], [], (["a", "b"], {}, [])),
    (
        "retention_until exactly now is due (deadline reached)",
        [seg("a", until=NOW)],
        [],
        (["a"], {}, []),
    ),
    (
        "one microsecond before the deadline is kept (R1)",
        [seg("a", until=NOW + timedelta(microseconds=1))],
        [],
        ([], {}, ["a"]),
    ),
    (
        "a hold on another camera keeps nothing",
        [seg("a", camera="cam-a")],
        [hold("h", {"cam-b"}, 0, 60)],
        (["a"], {}, []),
    ),
    (
        "a hold over the segment keeps it",
        [seg("a", minute=5), seg("b", minute=70)],
        [hold("h", {"cam-a"}, 0, 60)],
        (["b"], {"h": ["a"]}, []),
    ),
    (
        "partial overlap is enough: the hold starts in the segment's last instant",
        [seg("a", minute=9)],
        [HoldScope("h", "security", frozenset({"cam-a"}),
                   TimeRange(T + 10 * MIN - timedelta(microseconds=1), T + 20 * MIN))],
        ([], {"h": ["a"]}, []),
    ),
    (
        "half-open: a segment ending where the hold starts is not held",
        [seg("a", minute=9)],
        [hold("h", {"cam-a"}, 10, 20)],
        (["a"], {}, []),
    ),
    (
        "half-open: a segment starting where the hold ends is not held",
        [seg("a", minute=20)],
        [hold("h", {"cam-a"}, 10, 20)],
        (["a"], {}, []),
    ),
    (
        "a segment starting where the hold starts is held",
        [seg("a", minute=10)],
        [hold("h", {"cam-a"}, 10, 20)],
        ([], {"h": ["a"]}, []),
    ),
    (
        "an empty span inside a hold is held",
        [seg("a", minute=10, length=timedelta(0))],
        [hold("h", {"cam-a"}, 10, 20)],
        ([], {"h": ["a"]}, []),
    ),
    (
        "two holds over one segment: counted under both",
        [seg("a", minute=5)],
        [hold("h1", {"cam-a"}, 0, 10), hold("h2", {"cam-a", "cam-b"}, 4, 6, "security")],
        ([], {"h1": ["a"], "h2": ["a"]}, []),
    ),
    (
        "holds win even over long-expired retention",
        [seg("a", until=NOW - timedelta(days=400))],
        [hold("h", {"cam-a"}, 0, 1)],
        ([], {"h": ["a"]}, []),
    ),
    (
        "not yet due and held: not due wins the bookkeeping (never planned either way)",
        [seg("a", until=NOW + timedelta(days=1))],
        [hold("h", {"cam-a"}, 0, 1)],
        ([], {}, ["a"]),
    ),
    (
        "mixed cameras, order kept",
        [seg("c1", "cam-b", 3), seg("a1", "cam-a", 1), seg("a2", "cam-a", 2)],
        [hold("h", {"cam-a"}, 2, 3)],
        (["c1", "a1"], {"h": ["a2"]}, []),
    ),
]


@pytest.mark.parametrize(
    ("segments", "holds", "expected"),
    [pytest.param(s, h, e, id=name) for name, s, h, e in CASES],
)
def test_plan_table(
    segments: list[DueSegment], holds: list[HoldScope], expected: tuple[object, ...]
) -> None:
    result = plan(segments, holds, NOW)
    assert summary(result) == expected
    # Every input lands in exactly one place: purged, held, or not due.
    placed = set(ids(result.to_purge)) | result.held_ids | set(ids(result.not_due))
    assert placed == {s.id for s in segments}
    assert not set(ids(result.to_purge)) & result.held_ids


@pytest.mark.parametrize(
    ("count", "batch_size", "sizes"),
    [
        (0, 1000, []),
        (1, 1000, [1]),
        (1000, 1000, [1000]),
        (1001, 1000, [1000, 1]),
        (2500, 1000, [1000, 1000, 500]),
        (7, 3, [3, 3, 1]),
        (5, 1, [1, 1, 1, 1, 1]),
    ],
)
def test_batches_never_exceed_the_store_limit(
    count: int, batch_size: int, sizes: list[int]
) -> None:
    segments = [seg(f"s{i:05d}", minute=i) for i in range(count)]
    result = plan(segments, [], NOW, batch_size=batch_size)
    assert [len(b) for b in result.batches] == sizes
    assert ids(result.to_purge) == [s.id for s in segments]


def test_held_bytes_and_distinct_count() -> None:
    segments = [seg("a", minute=1, size=10), seg("b", minute=2, size=20), seg("c", minute=50)]
    result = plan(segments, [hold("h1", {"cam-a"}, 0, 3), hold("h2", {"cam-a"}, 2, 3)], NOW)
    by_hold = {h.hold.id: h.bytes for h in result.held}
    assert by_hold == {"h1": 30, "h2": 20}
    assert result.held_ids == {"a", "b"}
    assert ids(result.to_purge) == ["c"]


@pytest.mark.parametrize("batch_size", [0, -1, 1001])
def test_batch_size_out_of_range_is_refused(batch_size: int) -> None:
    with pytest.raises(InvalidInput):
        plan([seg("a")], [], NOW, batch_size=batch_size)


def test_naive_now_is_refused() -> None:
    with pytest.raises(InvalidInput):
        plan([seg("a")], [], NOW.replace(tzinfo=None))


def test_naive_retention_until_is_refused() -> None:
    with pytest.raises(InvalidInput):
        seg("a", until=NOW.replace(tzinfo=None))


def test_a_segment_listed_twice_is_refused() -> None:
    with pytest.raises(InvalidInput):
        plan([seg("a"), seg("a", minute=1)], [], NOW)


def test_now_in_another_zone_is_the_same_instant() -> None:
    from zoneinfo import ZoneInfo

    tokyo = NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    result = plan([seg("a", until=NOW)], [], tokyo)
    assert ids(result.to_purge) == ["a"]
    assert result.now == NOW
