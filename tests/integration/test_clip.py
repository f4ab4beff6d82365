"""Playback clips from real native segments, judged by Debian's ffprobe and by packet bytes.

The footage is recorded the way the recorder does it — a synthetic camera clip (H.264, 10 fps,
a keyframe every second) fed through the real segmenter (2 s segments) into the real
fragmented-MP4 writer — with wall-clock receive times set by the test: one run of three
segments, a gap of three seconds, then a run of two segments::

    T0      +2      +4      +6 . . . +9      +11     +13
    | seg0  | seg1  | seg2  |  gap   | seg3  | seg4  |
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
from sqlalchemy.engine import Engine

from ingest.fmp4 import FragmentWriter
from ingest.segmenter import (
    CloseSegment,
    OpenSegment,
    PacketMeta,
    Segmenter,
    SegmenterConfig,
    StartRun,
    WritePacket,
)
from ingest.simulate import render_clip
from tests.integration.test_lifecycle import CONFIG
from vault.catalog import segments_in_range, sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work
from vault.errors import IntegrityError, InvalidInput, NotFound
from vault.lifecycle import VaultContext, commit_segment, open_segment_for_playback, read_segment
from vault.media import Clip, ClipSource, open_clip, open_playback_clip
from vault.models import Segment
from vault.pending import PendingSegment
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock, TimeRange

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
FPS = 10
GAP_AFTER_PACKET = 60  # the camera drops out after 6 s of media...
GAP_SECONDS = 3  # ...and comes back 3 s of wall time later
S = timedelta(seconds=1)


# -- recording real segments ------------------------------------------------------------------


@dataclass(frozen=True)
class Native:
    """One recorded segment: its manifest (closed) and plaintext MP4."""

    pending: PendingSegment
    media: bytes

    @property
    def start(self) -> datetime:
        return self.pending.start

    @property
    def end(self) -> datetime:
        assert self.pending.end is not None
        return self.pending.end


def _record(clip: Path, spool: Path) -> list[Native]:
    """Run the camera clip through the segmenter and the fMP4 writer, like the recorder."""
    natives: list[Native] = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        assert time_base is not None
        segmenter = Segmenter(time_base, SegmenterConfig(target_seconds=2))
        run_id, run_started = "", T0
        writer: FragmentWriter | None = None
        pending: PendingSegment | None = None
        first_dts: int | None = None

        def execute(action: object, packet: Any) -> None:
            nonlocal run_id, run_started, writer, pending
            if isinstance(action, StartRun):
                run_id, run_started = str(uuid.uuid4()), action.wall_start
            elif isinstance(action, OpenSegment):
                pending = PendingSegment(
                    segment_id=str(uuid.uuid4()), camera_id="cam-a", run_id=run_id,
                    run_started_at=run_started, restamped=False, start=action.wall_start,
                    codec="h264", width=320, height=180,
                )
                writer = FragmentWriter(pending.media_path(spool), stream)
            elif isinstance(action, WritePacket):
                assert writer is not None
                writer.write(packet, action.pts, action.dts)
            elif isinstance(action, CloseSegment):
                assert writer is not None and pending is not None
                writer.close()
                closed = pending.with_(
                    state="closed", end=action.wall_end, media_duration=action.media_duration,
                    frames=action.frames,
                )
                natives.append(Native(closed, closed.media_path(spool).read_bytes()))
                writer, pending = None, None

        index = 0
        for packet in container.demux(stream):
            if not packet.size:
                continue
            assert packet.dts is not None
            if first_dts is None:
                first_dts = packet.dts
            if index == GAP_AFTER_PACKET:
                for action in segmenter.interrupt("camera dropped out (test)"):
                    execute(action, None)
            media = timedelta(seconds=float((packet.dts - first_dts) * time_base))
            lost = GAP_SECONDS * S if index >= GAP_AFTER_PACKET else timedelta(0)
            meta = PacketMeta(
                pts=packet.pts, dts=packet.dts, keyframe=packet.is_keyframe, size=packet.size,
                duration=packet.duration, received=T0 + media + lost,
            )
            for action in segmenter.feed(meta):
                execute(action, packet)
            index += 1
        for action in segmenter.finish():
            execute(action, None)
    return natives


@pytest.fixture(scope="module")
def natives(tmp_path_factory: pytest.TempPathFactory) -> list[Native]:
    clip = render_clip(
        tmp_path_factory.mktemp("camera") / "entrance.mkv",
        camera_name="entrance", width=320, height=180, fps=FPS, seconds=10, gop_seconds=1,
    )
    spool = tmp_path_factory.mktemp("recorded")
    recorded = _record(clip, spool)
    # The layout the module docstring draws, as the segmenter produced it.
    assert [(n.start - T0, n.end - T0) for n in recorded] == [
        (0 * S, 2 * S), (2 * S, 4 * S), (4 * S, 6 * S), (9 * S, 11 * S), (11 * S, 13 * S)
    ]
    assert len({n.pending.run_id for n in recorded[:3]}) == 1
    assert recorded[3].pending.run_id == recorded[4].pending.run_id != recorded[0].pending.run_id
    return recorded


def _returns(media: bytes) -> Callable[[], bytes]:
    return lambda: media


def sources(natives: list[Native]) -> list[ClipSource]:
    return [
        ClipSource(
            segment_id=n.pending.segment_id, start=n.start, end=n.end, codec="h264",
            width=320, height=180, read=_returns(n.media),
        )
        for n in natives
    ]


# -- judging a clip ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    wall: datetime  # for a clip: clip start + media time; for a segment: its start + dts
    duration: timedelta
    keyframe: bool
    payload: bytes


def _demux(data: bytes, origin: datetime) -> tuple[str, list[Packet]]:
    with av.open(io.BytesIO(data), "r", format="mp4") as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        packets = [
            Packet(
                origin + timedelta(seconds=float(p.dts * tb)),
                timedelta(seconds=float((p.duration or 0) * tb)),
                p.is_keyframe,
                bytes(p),
            )
            for p in container.demux(stream)
            if p.size and p.dts is not None
        ]
        return stream.codec_context.name, packets


def expected_packets(natives: list[Native], window: TimeRange) -> list[Packet]:
    """The specification, from the native segments alone: the last keyframe at or before the
    window's start (or the first footage after it), then everything that starts before its end."""
    overlapping = [n for n in natives if n.start < window.end and n.end > window.start]
    every = [p for n in overlapping for p in _demux(n.media, n.start)[1]]
    before = [i for i, p in enumerate(every) if p.keyframe and p.wall <= window.start]
    first = before[-1] if before else next(i for i, p in enumerate(every) if p.wall >= window.start)
    return [p for p in every[first:] if p.wall < window.end]


def ffprobe(path: Path) -> dict[str, Any]:
    found = shutil.which("ffprobe")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ffprobe is required in CI (make peers)")
        pytest.skip("ffprobe not installed")
    result = subprocess.run(
        [
            found, "-v", "error", "-of", "json", "-show_streams", "-show_format",
            "-show_entries", "packet=pts_time,dts_time,duration_time,flags,size", str(path),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    probe: dict[str, Any] = json.loads(result.stdout)
    return probe


TICK = timedelta(microseconds=100)  # timestamps are rounded to the muxers' time bases


def judge(clip: Clip, natives: list[Native], window: TimeRange, tmp_path: Path) -> list[Packet]:
    """Everything a clip must be; returns its packets for case-specific checks."""
    chunks = list(clip)
    data = b"".join(chunks)
    assert data[4:8] == b"ftyp"
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)

    probe = ffprobe(path)
    (stream,) = probe["streams"]
    assert stream["codec_type"] == "video" and stream["codec_name"] == "h264"
    assert (stream["width"], stream["height"]) == (320, 180)
    assert probe["packets"][0]["flags"].startswith("K")
    assert float(probe["packets"][0]["pts_time"]) == 0.0

    codec, got = _demux(data, clip.start)
    assert codec == "h264"
    want = expected_packets(natives, window)
    # Byte-identical packets, the same ones, in the same order (I1).
    assert [p.payload for p in got] == [p.payload for p in want]
    assert [p.keyframe for p in got] == [p.keyframe for p in want]
    # Media time is wall time since the first frame, across segment boundaries and gaps.
    for g, w in zip(got, want, strict=True):
        assert abs(g.wall - w.wall) <= TICK, (g.wall, w.wall)
    assert got[0].keyframe
    assert clip.start == want[0].wall
    footage_end = max(n.end for n in natives if n.start < window.end)
    last = got[-1]
    assert last.wall + last.duration >= min(window.end, footage_end) - TICK
    assert clip.end == min(window.end, footage_end)
    assert clip.content_type.startswith('video/mp4; codecs="avc1.')
    return got


# -- the cases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "start", "end", "segments"),
    [
        ("inside one segment", T0 + 2.35 * S, T0 + 3.5 * S, 1),
        ("spanning segments of a run", T0 + 1.5 * S, T0 + 5.25 * S, 3),
        ("exactly on a keyframe mid-segment", T0 + 3 * S, T0 + 4 * S, 1),
        ("exactly on a segment boundary", T0 + 2 * S, T0 + 4 * S, 1),
        ("spanning the gap", T0 + 5.5 * S, T0 + 10.05 * S, 2),
        ("starting in the gap", T0 + 7 * S, T0 + 12 * S, 2),
        ("ending in the gap", T0 + 4.5 * S, T0 + 8 * S, 1),
        ("everything", T0 - 60 * S, T0 + 60 * S, 5),
        ("one microsecond", T0 + 10.5 * S, T0 + 10.5 * S + timedelta(microseconds=1), 1),
    ],
)
def test_clip_is_the_native_packets_of_the_window(
    natives: list[Native],
    tmp_path: Path,
    label: str,
    start: datetime,
    end: datetime,
    segments: int,
) -> None:
    window = TimeRange(start, end)
    clip = open_clip(sources(natives), window)
    assert len(clip.segment_ids) == segments, label
    got = judge(clip, natives, window, tmp_path)
    if start >= natives[0].start and not any(
        n.end <= start < m.start for n, m in zip(natives, natives[1:], strict=False)
    ):
        assert clip.start <= start  # the keyframe at or before the asked start
    else:
        assert clip.start > start  # asked from a gap: the clip begins with the next footage
    if label == "exactly on a keyframe mid-segment":
        assert clip.start == start
        assert len(got) == FPS
    if label == "exactly on a segment boundary":
        assert clip.segment_ids == (natives[1].pending.segment_id,)


def test_gap_keeps_wall_time_in_media_time(natives: list[Native], tmp_path: Path) -> None:
    window = TimeRange(T0 + 4 * S, T0 + 11 * S)
    clip = open_clip(sources(natives), window)
    got = judge(clip, natives, window, tmp_path)
    assert clip.gaps == (TimeRange(T0 + 6 * S, T0 + 9 * S),)
    # The first frame after the gap plays 5 s into the clip: 2 s of footage, 3 s of gap.
    after_gap = next(p for p in got if p.wall >= T0 + 9 * S)
    assert after_gap.keyframe
    assert after_gap.wall - clip.start == 5 * S


def test_no_footage_in_the_window(natives: list[Native]) -> None:
    for window in (
        TimeRange(T0 + 6 * S, T0 + 9 * S),  # exactly the gap (half-open on both sides)
        TimeRange(T0 - 10 * S, T0),  # before the first footage
        TimeRange(T0 + 13 * S, T0 + 20 * S),  # after the last
    ):
        with pytest.raises(NotFound):
            open_clip(sources(natives), window)
    with pytest.raises(NotFound):
        open_clip([], TimeRange(T0, T0 + S))


def test_empty_window_is_invalid(natives: list[Native]) -> None:
    with pytest.raises(InvalidInput):
        open_clip(sources(natives), TimeRange(T0 + S, T0 + S))


def test_streams_one_segment_at_a_time(natives: list[Native]) -> None:
    """The init segment comes before later segments are even fetched; each is fetched once."""
    reads: list[int] = []

    def reader(index: int) -> Callable[[], bytes]:
        def read() -> bytes:
            reads.append(index)
            return natives[index].media

        return read

    inputs = [
        ClipSource(n.pending.segment_id, n.start, n.end, "h264", 320, 180, reader(i))
        for i, n in enumerate(natives)
    ]
    clip = open_clip(inputs, TimeRange(T0, T0 + 13 * S))
    assert reads == [0]  # preparing the clip reads only the first segment
    chunks: Iterator[bytes] = iter(clip)
    first = next(chunks)
    assert first[4:8] == b"ftyp" and b"moov" in first
    assert reads == [0]
    rest = list(chunks)
    assert reads == [0, 1, 2, 3, 4]
    # One fragment per GOP reaches the consumer as it is muxed, not the clip in one piece.
    assert len(rest) >= 10
    assert max(len(c) for c in rest) < sum(len(n.media) for n in natives) / 4


def test_a_clip_closed_early_releases_its_segments(natives: list[Native]) -> None:
    clip = open_clip(sources(natives), TimeRange(T0, T0 + 13 * S))
    chunks = iter(clip)
    next(chunks)
    clip.close()
    assert list(chunks) == []
    clip.close()  # idempotent

    # Never iterated (the caller failed between opening the clip and streaming it).
    unstarted = open_clip(sources(natives), TimeRange(T0, T0 + 13 * S))
    unstarted.close()
    assert list(unstarted) == []


def test_unreadable_first_segment_is_an_integrity_error(natives: list[Native]) -> None:
    broken = [
        ClipSource("bad", T0, T0 + 2 * S, "h264", 320, 180, lambda: b"\x00" * 4096),
        *sources(natives)[1:],
    ]
    with pytest.raises(IntegrityError):
        open_clip(broken, TimeRange(T0, T0 + 3 * S))


# -- through the vault: catalog rows, encrypted objects ---------------------------------------


@pytest.fixture
def vault_footage(
    engine: Engine, tmp_path: Path, keys: LocalKeyProvider, natives: list[Native]
) -> VaultContext:
    ctx = VaultContext(
        engine=engine, store=FilesystemStore(tmp_path / "store"), keys=keys, clock=FixedClock(T0)
    )
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {"cam-a": "rtsp://10.0.0.5/stream1"})
    spool = tmp_path / "spool"
    spool.mkdir()
    for native in natives:
        native.pending.media_path(spool).write_bytes(native.media)
        native.pending.save(spool)
        commit_segment(ctx, native.pending, spool)
    return ctx


def _rows(ctx: VaultContext, window: TimeRange) -> list[Segment]:
    with unit_of_work(ctx.engine) as session:
        return segments_in_range(session, "cam-a", window)


def test_clip_from_the_vault(
    vault_footage: VaultContext, natives: list[Native], tmp_path: Path
) -> None:
    window = TimeRange(T0 + 3.5 * S, T0 + 10.5 * S)
    rows = _rows(vault_footage, window)
    assert len(rows) == 3
    clip = open_playback_clip(vault_footage, rows, window)
    judge(clip, natives, window, tmp_path)
    assert clip.start == T0 + 3 * S
    with pytest.raises(NotFound):
        gap = TimeRange(T0 + 6.5 * S, T0 + 8 * S)
        open_playback_clip(vault_footage, _rows(vault_footage, gap), gap)


def test_segment_for_playback_is_the_authenticated_plaintext(
    vault_footage: VaultContext, natives: list[Native], tmp_path: Path
) -> None:
    rows = _rows(vault_footage, TimeRange(T0, T0 + 20 * S))
    for row, native in zip(rows, natives, strict=True):
        assert open_segment_for_playback(vault_footage, row) == native.media
        assert open_segment_for_playback(vault_footage, row) == read_segment(vault_footage, row)

    target = rows[1]
    path = tmp_path / "store" / "objects" / target.object_key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        open_segment_for_playback(vault_footage, target)
    # A clip that reaches the altered segment stops there with the same error.
    clip = open_playback_clip(vault_footage, rows[:3], TimeRange(T0, T0 + 6 * S))
    with pytest.raises(IntegrityError):
        list(clip)

    purged = target.model_copy(update={"wrapped_dek": None})
    with pytest.raises(NotFound):
        open_segment_for_playback(vault_footage, purged)


def test_stream_format_change_is_refused_before_any_byte(natives: list[Native]) -> None:
    inputs = sources(natives)
    changed = [inputs[0], ClipSource(inputs[1].segment_id, inputs[1].start, inputs[1].end,
                                     "h264", 640, 360, inputs[1].read)]
    with pytest.raises(InvalidInput, match="320x180 to h264 640x360"):
        open_clip(changed, TimeRange(T0, T0 + 4 * S))


def test_overlapping_segments_are_an_integrity_error(natives: list[Native]) -> None:
    inputs = sources(natives)
    shifted = ClipSource(inputs[1].segment_id, inputs[1].start - 0.5 * S,
                         inputs[1].end, "h264", 320, 180, inputs[1].read)
    with pytest.raises(IntegrityError, match="overlap"):
        open_clip([inputs[0], shifted], TimeRange(T0, T0 + 4 * S))


# -- Chromium as the judge of "plays in Chrome" -----------------------------------------------

_VIRTUAL_MS = 600_000  # the page's give-up timer and Chromium's virtual-time budget

_PAGE = """<!doctype html><html><body><video id="v" muted playsinline></video><pre id="out"></pre>
<script>
const v = document.getElementById('v');
let reported = false;
const report = (why) => {
  if (reported) return;  // the first outcome is the answer
  reported = true;
  const ranges = [];
  for (let i = 0; i < v.buffered.length; i++) ranges.push([v.buffered.start(i), v.buffered.end(i)]);
  document.getElementById('out').textContent = JSON.stringify({why, duration: v.duration,
    currentTime: v.currentTime, error: v.error && v.error.code, buffered: ranges});
};
v.addEventListener('error', () => report('error'));
v.addEventListener('timeupdate', () => { if (v.currentTime >= v.duration - 0.05) report('end'); });
// Virtual time: Chromium runs it ahead whenever the page waits on nothing it tracks, and
// real-time media playback is not such a wait, so on a loaded machine a short budget could
// expire before 13 s of clip at 4x had played. A generous one costs nothing when all goes well.
setTimeout(() => report('timeout'), VIRTUAL_MS);
const play = () => { v.playbackRate = 4; v.play(); };
if (MODE === 'mse') {
  // Media Source Extensions: the page appends the streamed chunks as they arrive.
  const ms = new MediaSource();
  v.src = URL.createObjectURL(ms);
  ms.addEventListener('sourceopen', async () => {
    const buffer = ms.addSourceBuffer(TYPE);
    const reader = (await fetch('/stream.mp4')).body.getReader();
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      buffer.appendBuffer(value);
      await new Promise(resolve => buffer.addEventListener('updateend', resolve, {once: true}));
    }
    ms.endOfStream();
    play();
  });
} else {
  v.src = '/ranged.mp4';  // a plain <video src> over a response that answers Range requests
  play();
}
</script></body></html>"""


def _serve(clip: Clip, data: bytes, mode: str) -> ThreadingHTTPServer:
    page = (
        _PAGE.replace("MODE", json.dumps(mode))
        .replace("TYPE", json.dumps(clip.content_type))
        .replace("VIRTUAL_MS", str(_VIRTUAL_MS))
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def do_GET(self) -> None:
            if self.path == "/page.html":
                self._head(200, {"Content-Type": "text/html", "Content-Length": str(len(page))})
                self.wfile.write(page)
            elif self.path == "/stream.mp4":
                # The clip's own chunks, sent as they are produced: no length, no ranges.
                self._head(200, {"Content-Type": clip.content_type, "Transfer-Encoding": "chunked"})
                for chunk in clip:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif self.path == "/ranged.mp4":
                first, last = 0, len(data) - 1
                asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if asked:
                    first = int(asked.group(1))
                    last = min(last, int(asked.group(2) or last))
                headers = {
                    "Content-Type": "video/mp4",
                    "Accept-Ranges": "bytes",
                    "Content-Length": str(last - first + 1),
                }
                if asked:
                    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
                self._head(206 if asked else 200, headers)
                self.wfile.write(data[first : last + 1])
            else:
                self._head(404, {"Content-Length": "0"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mse", "ranged"])
def test_chromium_plays_the_clip_across_segments_and_the_gap(
    natives: list[Native], mode: str
) -> None:
    """Headless Chromium plays the whole clip (two runs, the gap between) to its end: streamed
    into Media Source Extensions, or as a plain ``<video src>`` over a Range-capable response.

    (A plain ``<video src>`` over a streamed response without Range stops after the few
    seconds Chromium probes first: docs/design/playback.md, "Playing it in a browser".)
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (make peers installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    window = TimeRange(T0, T0 + 13 * S)
    data = b"".join(open_clip(sources(natives), window))
    clip = open_clip(sources(natives), window)
    server = _serve(clip, data, mode)
    try:
        result = subprocess.run(
            [
                browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required",
                f"--virtual-time-budget={_VIRTUAL_MS}",
                "--dump-dom", f"http://127.0.0.1:{server.server_address[1]}/page.html",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="out">(.*?)</pre>', result.stdout, re.S)
    assert found and found.group(1), result.stdout[-2000:]
    report = json.loads(html.unescape(found.group(1)))
    assert report["error"] is None, report
    assert report["why"] == "end", report
    assert report["duration"] == pytest.approx(13.0, abs=0.15), report
    assert report["currentTime"] >= 12.9, report
