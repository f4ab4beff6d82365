"""Fragmented MP4 writer, crash truncation and summaries, checked against Debian's ffprobe."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from ingest.fmp4 import (
    FragmentWriter,
    MediaSummary,
    h264_nal_units,
    summarize,
    truncate_to_complete_fragments,
)
from ingest.simulate import render_clip
from vault.errors import IntegrityError

FPS = 10
SECONDS = 6
GOP = 10  # fps * gop_seconds
FRAMES = FPS * SECONDS
# SEI, SPS, PPS, AUD: the muxer may move or add parameter sets; slices must be untouched.
_IGNORED_NAL_TYPES = {6, 7, 8, 9}


def _ffprobe() -> str:
    found = shutil.which("ffprobe")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ffprobe is required in CI (make peers)")
        pytest.skip("ffprobe not installed")
    return found


@dataclass(frozen=True)
class Probe:
    returncode: int
    stderr: str
    codec: str | None
    packets: int | None


def ffprobe(path: Path) -> Probe:
    result = subprocess.run(
        [
            _ffprobe(),
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "stream=codec_name,nb_read_packets",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    codec: str | None = None
    packets: int | None = None
    if result.returncode == 0:
        streams = json.loads(result.stdout).get("streams", [])
        if streams:
            codec = streams[0].get("codec_name")
            packets = int(streams[0]["nb_read_packets"])
    return Probe(result.returncode, result.stderr.strip(), codec, packets)


def slice_nal_units(data: bytes) -> list[bytes]:
    return [unit for unit in h264_nal_units(data) if unit[0] & 0x1F not in _IGNORED_NAL_TYPES]


@dataclass(frozen=True)
class SourcePacket:
    pts: int
    dts: int
    keyframe: bool
    payload: bytes


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_clip(
        tmp_path_factory.mktemp("clips") / "lobby.mkv",
        camera_name="lobby",
        width=320,
        height=180,
        fps=FPS,
        seconds=SECONDS,
        gop_seconds=1,
    )


@pytest.fixture(scope="module")
def source_packets(clip: Path) -> list[SourcePacket]:
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        return [
            SourcePacket(p.pts or 0, p.dts or 0, p.is_keyframe, bytes(p))
            for p in container.demux(stream)
            if p.size
        ]


def copy_clip(clip: Path, target: Path) -> Iterator[tuple[int, bool]]:
    """Copy ``clip`` through a FragmentWriter, yielding (index, keyframe) after each write."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        writer = FragmentWriter(target, stream)
        first_dts: int | None = None
        index = 0
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                assert packet.pts is not None and packet.dts is not None
                if first_dts is None:
                    first_dts = packet.dts
                keyframe = packet.is_keyframe
                writer.write(packet, packet.pts - first_dts, packet.dts - first_dts)
                yield index, keyframe
                index += 1
        finally:
            writer.close()


@pytest.fixture(scope="module")
def fragmented(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("segments") / "segment.mp4"
    for _ in copy_clip(clip, target):
        pass
    return target


def test_ffprobe_reads_every_packet(fragmented: Path) -> None:
    probe = ffprobe(fragmented)
    assert probe.returncode == 0, probe.stderr
    assert probe.stderr == ""
    assert probe.codec == "h264"
    assert probe.packets == FRAMES


def test_one_fragment_per_keyframe(fragmented: Path) -> None:
    data = fragmented.read_bytes()
    types = []
    offset = 0
    while offset < len(data):
        size, box_type = struct.unpack_from(">I4s", data, offset)
        types.append(box_type)
        offset += size
    assert types[:2] == [b"ftyp", b"moov"]
    assert types.count(b"moof") == FRAMES // GOP
    assert types.count(b"mdat") == FRAMES // GOP


def test_payloads_are_copied_not_transcoded(
    fragmented: Path, source_packets: list[SourcePacket]
) -> None:
    with av.open(str(fragmented)) as container:
        stream = container.streams.video[0]
        written = [p for p in container.demux(stream) if p.size]
        time_base = stream.time_base
        assert time_base is not None
        assert len(written) == len(source_packets)
        first = source_packets[0].dts
        for source, copy in zip(source_packets, written, strict=True):
            assert slice_nal_units(bytes(copy)) == slice_nal_units(source.payload)
            assert copy.is_keyframe == source.keyframe
            # Rebased to zero: 1/1000 in Matroska, the muxer's own timescale in the MP4.
            assert copy.dts is not None
            assert float(copy.dts * time_base) == pytest.approx((source.dts - first) / 1000)


def test_each_completed_fragment_is_on_disk_when_the_next_keyframe_is_written(
    clip: Path, tmp_path: Path
) -> None:
    target = tmp_path / "live.mp4"
    snapshot = tmp_path / "snapshot.mp4"
    checked = 0
    for index, keyframe in copy_clip(clip, target):
        if keyframe and index > 0:
            # What a crash right now would leave behind: the bytes the kernel has.
            shutil.copyfile(target, snapshot)
            assert truncate_to_complete_fragments(snapshot) > 0
            assert summarize(snapshot).frames == index
            checked += 1
    assert checked == FRAMES // GOP - 1


def test_bytes_written_and_close_size(clip: Path, tmp_path: Path) -> None:
    target = tmp_path / "sized.mp4"
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        writer = FragmentWriter(target, stream)
        for packet in container.demux(stream):
            if packet.size:
                writer.write(packet, packet.pts or 0, packet.dts or 0)
        assert writer.bytes_written > 0
        size = writer.close()
    assert size == target.stat().st_size == writer.bytes_written
    assert writer.close() == size  # idempotent


def test_truncation_keeps_a_readable_prefix_of_whole_fragments(
    fragmented: Path, tmp_path: Path
) -> None:
    data = fragmented.read_bytes()
    cut_file = tmp_path / "cut.mp4"
    probes: dict[int, int] = {}  # new size -> packet count
    previous_count = 0
    cuts = [*range(0, len(data), 397), len(data) - 1, len(data)]
    for cut in sorted(set(cuts)):
        cut_file.write_bytes(data[:cut])
        new_size = truncate_to_complete_fragments(cut_file)
        assert cut_file.stat().st_size == new_size
        if new_size == 0:
            count = 0
        else:
            assert new_size <= cut
            if new_size not in probes:
                probe = ffprobe(cut_file)
                assert probe.returncode == 0, (cut, probe.stderr)
                assert probe.stderr == "", (cut, probe.stderr)
                assert probe.packets is not None
                probes[new_size] = probe.packets
            count = probes[new_size]
            assert cut_file.read_bytes() == data[:new_size]
            # Idempotent: a recovered file is already whole.
            assert truncate_to_complete_fragments(cut_file) == new_size
        assert count % GOP == 0  # only whole fragments (one GOP each) survive
        assert count >= previous_count, cut  # monotone in the cut offset
        previous_count = count
    assert previous_count == FRAMES
    assert len(probes) == FRAMES // GOP


def _box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def _large_box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4sQ", 1, box_type, 16 + len(payload)) + payload


def test_box_walker_handles_largesize_and_to_end_boxes(tmp_path: Path) -> None:
    init = _box(b"ftyp", b"isom") + _box(b"moov", b"x" * 20)
    first = _box(b"moof", b"m" * 12) + _large_box(b"mdat", b"d" * 30)
    to_end = _box(b"moof", b"m" * 12) + struct.pack(">I4s", 0, b"mdat") + b"tail"
    path = tmp_path / "boxes.mp4"

    path.write_bytes(init + first + to_end)
    assert truncate_to_complete_fragments(path) == len(init + first + to_end)

    path.write_bytes(init + first + _box(b"mfra", b"r" * 8))
    assert truncate_to_complete_fragments(path) == len(init + first)

    path.write_bytes(init + first + _box(b"moof", b"m" * 12) + _box(b"mdat", b"d" * 30)[:-1])
    assert truncate_to_complete_fragments(path) == len(init + first)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        _box(b"ftyp", b"isom"),
        _box(b"ftyp", b"isom") + _box(b"moov", b"x" * 20),  # init segment, no fragment
        _box(b"ftyp", b"isom") + _box(b"moov", b"x" * 20) + _box(b"mdat", b"d"),  # no moof
        _box(b"moov", b"x" * 20) + _box(b"moof", b"m") + _box(b"mdat", b"d"),  # no ftyp
        _box(b"ftyp", b"isom") + struct.pack(">I4s", 4, b"moov") + b"\0" * 64,  # size < 8
        b"hello, this is not an mp4 file at all\n" * 8,
    ],
)
def test_nothing_complete_truncates_to_zero(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    assert truncate_to_complete_fragments(path) == 0
    assert path.stat().st_size == 0


def test_summarize(fragmented: Path, clip: Path) -> None:
    expected = MediaSummary(
        codec="h264",
        width=320,
        height=180,
        frames=FRAMES,
        media_duration=float(SECONDS),
        first_is_keyframe=True,
    )
    assert summarize(fragmented) == expected
    assert summarize(clip) == expected


def test_summarize_rejects_non_media(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video\n")
    with pytest.raises(IntegrityError):
        summarize(path)


def test_nal_units_of_both_framings() -> None:
    sps, pps, idr = b"\x67\x42\x00\x1e", b"\x68\xce\x38\x80", b"\x65\x88\x84\x00\x33"
    annex_b = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x00\x01" + idr
    avcc = b"".join(struct.pack(">I", len(unit)) + unit for unit in (sps, pps, idr))
    assert h264_nal_units(annex_b) == [sps, pps, idr]
    assert h264_nal_units(avcc) == [sps, pps, idr]
    assert h264_nal_units(b"") == []
    with pytest.raises(ValueError):
        h264_nal_units(b"\x12\x34\x56\x78\x9a")


def test_nal_units_agree_across_framings(source_packets: list[SourcePacket]) -> None:
    for packet in source_packets:
        units = h264_nal_units(packet.payload)
        assert units
        annex_b = b"".join(b"\x00\x00\x00\x01" + unit for unit in units)
        assert h264_nal_units(annex_b) == units
