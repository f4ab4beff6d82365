"""Source opening, credential handling and redaction; no credential may reach a message."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av
import numpy as np
import pytest

from ingest.simulate import render_clip
from ingest.sources import (
    SourceError,
    authenticated_url,
    open_source,
    read_packets,
    redact_url,
    resolve_credentials,
    video_stream,
)
from vault.errors import ConfigError, Unavailable

SECRET = "hunter2-S3cr3t"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_clip(
        tmp_path_factory.mktemp("clips") / "gate.mkv",
        camera_name="gate",
        width=320,
        height=180,
        fps=10,
        seconds=4,
        gop_seconds=1,
    )


def assert_no_secret(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    # FFmpeg's exception (whose text holds the full URL) must not ride along either.
    assert exc.__cause__ is None
    assert exc.__context__ is None
    for record in caplog.records:
        assert SECRET not in record.getMessage()


# redact_url -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"rtsp://admin:{SECRET}@10.0.0.5:554/Streaming/Channels/101",
            "rtsp://***@10.0.0.5:554/Streaming/Channels/101",
        ),
        ("rtsp://admin@cam.local/live", "rtsp://***@cam.local/live"),
        (f"rtsp://admin:pa/ss?{SECRET}@cam:554/x", "rtsp://***@cam:554/x"),
        (
            f"http://cam/snapshot.cgi?user=admin&token={SECRET}&channel=1",
            "http://cam/snapshot.cgi?user=admin&token=***&channel=1",
        ),
        (
            f"https://u:{SECRET}@s3.local/b/o?X-Amz-Signature={SECRET}&api_key={SECRET}#t=5",
            "https://***@s3.local/b/o?X-Amz-Signature=***&api_key=***#t=5",
        ),
        (f"rtsp://cam/live;pwd={SECRET};ch=1", "rtsp://cam/live;pwd=***;ch=1"),
        (
            f"rtsp://10.0.0.9:554/user=admin&password={SECRET}&channel=1&stream=0.sdp?",
            "rtsp://10.0.0.9:554/user=admin&password=***&channel=1&stream=0.sdp?",
        ),
        (f"http://cam/a?Passwd=ab/{SECRET}&x=1", "http://cam/a?Passwd=***&x=1"),
        ("rtsp://cam.local:554/live", "rtsp://cam.local:554/live"),
        ("/var/lib/cctv/clips/cam.mkv", "/var/lib/cctv/clips/cam.mkv"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert SECRET not in redact_url(url)


def test_authenticated_url_percent_encodes() -> None:
    password = "p@ss:w/rd?#%"
    url = authenticated_url("rtsp://old:creds@cam.local:554/live?x=1", ("adm in", password))
    parts = urlsplit(url)
    assert parts.hostname == "cam.local" and parts.port == 554
    assert parts.path == "/live" and parts.query == "x=1"
    assert parts.username is not None and parts.password is not None
    assert unquote(parts.username) == "adm in"
    assert unquote(parts.password) == password
    assert redact_url(url) == "rtsp://***@cam.local:554/live?x=1"
    assert authenticated_url("rtsp://cam/live", None) == "rtsp://cam/live"


# resolve_credentials ----------------------------------------------------------------------------


def test_credentials_from_environment() -> None:
    environ = {"CAM1_USERNAME": "viewer", "CAM1_PASSWORD": SECRET}
    assert resolve_credentials("CAM1", None, environ) == ("viewer", SECRET)


def test_credentials_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "cam1.secret"
    secret_file.write_text(f"viewer:{SECRET}:with-colon\nignored\n")
    assert resolve_credentials(None, secret_file, {}) == ("viewer", f"{SECRET}:with-colon")


def test_no_credentials_configured() -> None:
    assert resolve_credentials(None, None, {"CAM1_PASSWORD": SECRET}) is None


def test_missing_variable_is_named_without_values() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_credentials("CAM1", None, {"CAM1_PASSWORD": SECRET})
    assert "CAM1_USERNAME" in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        resolve_credentials("CAM1", None, {"CAM1_USERNAME": SECRET})
    assert "CAM1_PASSWORD" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_missing_or_malformed_file_is_named_without_values(tmp_path: Path) -> None:
    missing = tmp_path / "absent.secret"
    with pytest.raises(ConfigError, match="absent.secret"):
        resolve_credentials(None, missing, {})
    malformed = tmp_path / "malformed.secret"
    malformed.write_text(f"{SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(None, malformed, {})
    assert "malformed.secret" in str(caught.value)
    assert SECRET not in str(caught.value)
    binary = tmp_path / "binary.secret"
    binary.write_bytes(b"user:\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(None, binary, {})
    assert caught.value.__context__ is None


# open_source / read_packets ---------------------------------------------------------------------


def test_source_error_is_unavailable() -> None:
    assert issubclass(SourceError, Unavailable)


def test_text_file_is_not_video(tmp_path: Path) -> None:
    text = tmp_path / "readme.mkv"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(SourceError) as caught:
        open_source(str(text), kind="file", open_timeout_s=2, read_timeout_s=2)
    assert caught.value.reason == "not-video"


def test_file_opens_and_reads_every_packet(clip: Path) -> None:
    container = open_source(str(clip), kind="file", open_timeout_s=2, read_timeout_s=2)
    with container:
        assert video_stream(container).codec_context.name == "h264"
        packets = list(read_packets(container))
    assert len(packets) == 40
    assert all(p.size > 0 for p in packets)


def test_mpeg4_video_is_an_unsupported_codec(tmp_path: Path) -> None:
    path = tmp_path / "old-dvr.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(SourceError) as caught:
        open_source(str(path), kind="file", open_timeout_s=2, read_timeout_s=2)
    assert caught.value.reason == "unsupported-codec"
    assert "mpeg4" in str(caught.value)


@pytest.mark.parametrize("fraction", [0.02, 0.2, 0.5, 0.9])
def test_truncated_clip_yields_a_prefix_or_source_error(
    clip: Path, tmp_path: Path, fraction: float
) -> None:
    data = clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * fraction)])
    try:
        container = open_source(str(cut), kind="file", open_timeout_s=2, read_timeout_s=2)
    except SourceError as exc:
        assert exc.reason in {"not-video", "corrupt", "eof", "error"}
        return
    read = 0
    with container:
        try:
            for _packet in read_packets(container):
                read += 1
        except SourceError as exc:
            assert exc.reason in {"corrupt", "eof", "error"}
    assert read < 40
    if fraction >= 0.5:
        assert read > 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_refused_rtsp_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{_free_port()}/live"
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        open_source(url, kind="rtsp", open_timeout_s=2, read_timeout_s=2)
    assert time.monotonic() - started < 2.5
    assert caught.value.reason in {"refused", "timeout"}
    assert "127.0.0.1" in str(caught.value)
    assert_no_secret(caught.value, caplog)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield int(server.getsockname()[1])


def test_silent_rtsp_peer_times_out(silent_listener: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{silent_listener}/live"
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        open_source(url, kind="rtsp", open_timeout_s=0.5, read_timeout_s=0.5)
    assert time.monotonic() - started < 2.0
    assert caught.value.reason == "timeout"
    assert_no_secret(caught.value, caplog)


@pytest.fixture
def stalling_http(clip: Path) -> Iterator[str]:
    """An HTTP peer that sends half of the clip, then goes quiet until the test ends."""
    body = clip.read_bytes()
    done = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: video/x-matroska\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            conn.sendall(body[: len(body) // 2])
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://viewer:{SECRET}@127.0.0.1:{port}/gate.mkv?token={SECRET}"
    finally:
        done.set()
        thread.join(10)
        server.close()


def test_stalled_http_read_times_out(stalling_http: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    container = open_source(stalling_http, kind="http", open_timeout_s=2, read_timeout_s=0.5)
    read = 0
    with container, pytest.raises(SourceError) as caught:
        for _packet in read_packets(container):
            read += 1
    assert 0 < read < 40
    assert caught.value.reason == "timeout"
    assert "token=***" in str(caught.value)
    assert_no_secret(caught.value, caplog)


def test_unknown_kind_is_a_config_error(clip: Path) -> None:
    with pytest.raises(ConfigError):
        open_source(str(clip), kind="onvif", open_timeout_s=1, read_timeout_s=1)
