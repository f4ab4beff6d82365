"""RTSP camera test peer: H.264 test clips and a gst-rtsp-server subprocess.

Registered as a pytest plugin by ``tests/conftest.py``. Fixtures:

- ``rtsp_clip`` (session): ``Path`` of a 90 s, 640x360, 15 fps, 1 s GOP H.264 clip in
  Matroska (shared by the session: do not modify it; copy it with :func:`make_h264_mkv`).
- ``rtsp_server`` (function): a running :class:`RtspServer` serving ``/cam`` from
  ``rtsp_clip`` with ``loop=True`` (the camera never ends); ``rtsp_server.url("/cam")``.
- ``rtsp_server_factory`` (function): ``factory({"/cam": clip, ...}, loop=False)`` starts
  more servers (other clips, several mounts, a camera whose stream ends); all are stopped at
  teardown.

The server is ``tests/support/rtsp_server.py`` run with Debian's ``/usr/bin/python3``
(gst-rtsp-server through python3-gi). When that interpreter cannot import GstRtspServer the
server fixtures skip, or fail when ``CI=true``.

What a PyAV client sees (``rtsp_transport=tcp``), measured with gst-rtsp-server 1.22 and
PyAV 18: time base 1/90000; the first packet is the keyframe (SEI+SPS+PPS+IDR) with
``pts``/``dts`` None; from the second packet on ``pts == dts``, starting at one frame
(6030 = 67 ms, Matroska's millisecond timestamps), strictly increasing. Each session gets the
file from its first frame; with ``loop`` the timestamps continue across the file's end.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
HOST = "127.0.0.1"
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-rtsp"
)
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

# --------------------------------------------------------------------------------------------
# Test clips
# --------------------------------------------------------------------------------------------

_clip_lock = threading.Lock()
_clip_dir: Path | None = None
_clip_cache: dict[tuple[int, int, int, int, float], Path] = {}


def _session_clip_dir() -> Path:
    global _clip_dir
    if _clip_dir is None:
        _clip_dir = Path(tempfile.mkdtemp(prefix="cctv-rtsp-clips-"))
    return _clip_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    global _clip_dir
    if _clip_dir is not None:
        shutil.rmtree(_clip_dir, ignore_errors=True)
        _clip_dir = None
        _clip_cache.clear()


class _Pattern:
    """Synthetic yuv420p frames: a scrolling diagonal gradient, a sweeping bar, and a block
    that moves once a second (so every second of footage differs)."""

    def __init__(self, fps: int, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("yuv420p needs an even width and height")
        self.fps, self.width, self.height = fps, width, height
        x = np.arange(width + 1024, dtype=np.int32)
        y = np.arange(height, dtype=np.int32)[:, None]
        self._luma = ((x + y) % 256).astype(np.uint8)
        cw, ch = width // 2, height // 2
        cx = np.arange(cw, dtype=np.int32)[None, :]
        cy = np.arange(ch, dtype=np.int32)[:, None]
        self._u = np.broadcast_to(96 + cx * 64 // cw, (ch, cw)).astype(np.uint8)
        self._v = np.broadcast_to(96 + cy * 64 // ch, (ch, cw)).astype(np.uint8)

    def frame(self, index: int) -> av.VideoFrame:
        w, h = self.width, self.height
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        shift = (index * 4) % 1024
        buf[:h] = self._luma[:, shift : shift + w]
        bar = (index * 5) % h
        buf[bar : bar + 12] = 235
        second = index // self.fps
        bx = (second * 37) % max(1, w - 48)
        buf[8 : min(h, 56), bx : bx + 48] = (second * 53) % 200 + 16
        chroma = buf[h:].reshape(2, h // 2, w // 2)
        chroma[0] = self._u
        chroma[1] = self._v
        return av.VideoFrame.from_ndarray(buf, format="yuv420p")


def _encode_h264_mkv(
    path: Path, *, seconds: int, fps: int, width: int, height: int, gop_seconds: float
) -> None:
    gop = max(1, round(gop_seconds * fps))
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        stream.options = {
            "preset": "ultrafast",
            "bf": "0",
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "x264-params": f"bframes=0:keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        pattern = _Pattern(fps, width, height)
        for i in range(seconds * fps):
            frame = pattern.frame(i)
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)


def make_h264_mkv(
    path: Path,
    *,
    seconds: int,
    fps: int = 15,
    width: int = 640,
    height: int = 360,
    gop_seconds: float = 1.0,
) -> Path:
    """Write a synthetic H.264 clip in Matroska to ``path`` and return ``path``.

    libx264 (ultrafast), yuv420p, no B-frames, a keyframe exactly every ``gop_seconds``
    (fixed GOP, no scene cuts); timestamps start at 0 and step one frame (Matroska stores
    milliseconds, so 15 fps reads back as 0, 67, 133, 200 ms...). Each parameter set is
    encoded once per session into a session temp dir; later calls copy that file.
    """
    key = (seconds, fps, width, height, float(gop_seconds))
    with _clip_lock:
        cached = _clip_cache.get(key)
        if cached is None or not cached.exists():
            name = f"clip-{seconds}s-{width}x{height}-{fps}fps-gop{gop_seconds:g}.mkv"
            cached = _session_clip_dir() / name
            _encode_h264_mkv(
                cached,
                seconds=seconds,
                fps=fps,
                width=width,
                height=height,
                gop_seconds=gop_seconds,
            )
            _clip_cache[key] = cached
    path = Path(path)
    if path.resolve() != cached.resolve():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, path)
    return path


# --------------------------------------------------------------------------------------------
# The server subprocess
# --------------------------------------------------------------------------------------------


class RtspServerError(RuntimeError):
    """The RTSP test server did not start or stop as expected."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class RtspServer:
    """``tests/support/rtsp_server.py`` as a subprocess on a loopback port.

    ``mounts`` maps a mount path (``"/cam"``) to a Matroska H.264 file. The port is chosen
    once (free at the first start) and kept across :meth:`stop`/:meth:`start`, so camera
    URLs stay valid across a restart.
    """

    def __init__(
        self,
        mounts: Mapping[str, Path],
        *,
        loop: bool = False,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        if not mounts:
            raise ValueError("at least one mount is needed")
        for mount in mounts:
            if not mount.startswith("/"):
                raise ValueError(f"mount must start with '/': {mount!r}")
        self.mounts = {m: Path(p) for m, p in mounts.items()}
        self.loop = loop
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="cctv-rtsp-server-"))
        self._starts = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"rtsp://{self.host}:{self.port}"

    def url(self, mount: str = "/cam") -> str:
        if mount not in self.mounts:
            raise KeyError(f"{mount!r} is not mounted (mounts: {sorted(self.mounts)})")
        return self.base_url + mount

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server (same port as before) and wait for its READY line."""
        if self.running:
            raise RtspServerError("RTSP server already running")
        attempts = 1 if (self._fixed_port or self._starts) else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                break
            except RtspServerError:
                # An auto-picked port can be taken between probing and binding: pick again.
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
        self._starts += 1

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout``; returns once the port refuses connections.
        A no-op when not running."""
        if self._proc is None:
            return
        self._terminate()
        deadline = time.monotonic() + self.stop_timeout
        while port_accepts(self.host, self.port):
            if time.monotonic() > deadline:
                raise RtspServerError(f"port {self.port} still accepts connections after stop")
            time.sleep(0.01)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self._proc = None

    def log(self) -> str:
        """The server's stderr (all starts)."""
        path = self._log_dir / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> RtspServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RtspServer({self.base_url}, mounts={sorted(self.mounts)}, {state})"

    # -- internals -------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port)]
        for mount, path in self.mounts.items():
            cmd += ["--mount", f"{mount}={path}"]
        if self.loop:
            cmd.append("--loop")
        return cmd

    def _spawn_and_wait(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log_dir / "stderr.log", "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal is the harness's to handle
            )
        self._proc = proc
        assert proc.stdout is not None
        expected = f"READY {self.base_url}"
        try:
            line = _read_line(proc.stdout.fileno(), time.monotonic() + self.start_timeout)
        except TimeoutError:
            self._terminate()
            raise RtspServerError(
                f"RTSP server not ready after {self.start_timeout} s\n{self.log()[-2000:]}"
            ) from None
        if line != expected:
            self._terminate()
            raise RtspServerError(
                f"RTSP server did not start (got {line!r}, want {expected!r}; "
                f"exit {proc.returncode})\n{self.log()[-2000:]}"
            )


def _read_line(fd: int, deadline: float) -> str:
    """One line from a pipe, waiting at most until ``deadline``; "" on EOF."""
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not sel.select(remaining):
                continue
            # One byte at a time: nothing after the line is consumed (the server prints no
            # more, but the pipe stays clean either way).
            chunk = os.read(fd, 1)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


# --------------------------------------------------------------------------------------------
# Availability and fixtures
# --------------------------------------------------------------------------------------------

_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "assert Gst.ElementFactory.find('matroskademux') and Gst.ElementFactory.find('h264parse') "
    "and Gst.ElementFactory.find('rtph264pay'), 'missing GStreamer elements'"
)
_availability: str | None = None  # "" when available, else the reason


def rtsp_peer_unavailable() -> str:
    """Why ``/usr/bin/python3`` cannot run the server; empty when it can (cached)."""
    global _availability
    if _availability is None:
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            _availability = f"{SYSTEM_PYTHON} not found"
        else:
            try:
                res = subprocess.run(
                    [SYSTEM_PYTHON, "-c", _PROBE],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                err = res.stderr.strip().splitlines()
                _availability = "" if res.returncode == 0 else (err[-1] if err else "failed")
            except subprocess.TimeoutExpired:
                _availability = "probing gst-rtsp-server timed out"
    return _availability


def require_rtsp_peer() -> None:
    """Skip (or fail when ``CI=true``) unless the gst-rtsp-server peer can run."""
    reason = rtsp_peer_unavailable()
    if not reason:
        return
    message = (
        f"gst-rtsp-server test peer unavailable: {SYSTEM_PYTHON} cannot run it ({reason}). "
        f"Install: apt-get install -y --no-install-recommends {APT_PACKAGES}"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "rtsp_server" in names or "rtsp_server_factory" in names:
            item.add_marker(pytest.mark.rtsp)


@pytest.fixture(scope="session")
def rtsp_clip() -> Path:
    """A 90 s 640x360 15 fps H.264 clip (1 s GOP) in Matroska, encoded once per session."""
    return make_h264_mkv(
        _session_clip_dir() / "clip-90s-640x360-15fps-gop1.mkv",
        seconds=90,
        fps=15,
        width=640,
        height=360,
        gop_seconds=1.0,
    )


RtspServerFactory = Callable[..., RtspServer]


@pytest.fixture
def rtsp_server_factory() -> Iterator[RtspServerFactory]:
    """``factory(mounts, *, loop=False, port=None) -> RtspServer`` (started); all stopped
    at teardown."""
    require_rtsp_peer()
    servers: list[RtspServer] = []

    def factory(
        mounts: Mapping[str, Path], *, loop: bool = False, port: int | None = None
    ) -> RtspServer:
        server = RtspServer(mounts, loop=loop, port=port)
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def rtsp_server(rtsp_server_factory: RtspServerFactory, rtsp_clip: Path) -> RtspServer:
    """A running server with ``/cam`` playing ``rtsp_clip`` in a loop (a camera that never
    ends); each client session starts at the clip's first frame."""
    return rtsp_server_factory({"/cam": rtsp_clip}, loop=True)
