"""P2's RTSP cameras: the tests' gst-rtsp-server peer (``tests/support/rtsp.py``) serving one
clip on N mounts.

The server is a separate process (Debian's ``/usr/bin/python3`` with gst-rtsp-server), so its
CPU never lands in the measured ingest child's ``getrusage``; :func:`server_cpu_s` reads it
from ``/proc`` for information only. Every mount replays the same file forever (``loop=True``,
continuous timestamps); each client session runs its own pipeline from the file's first frame,
paced at real time by the server's clock, as a live camera delivers it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.rtsp import APT_PACKAGES, RtspServer, rtsp_peer_unavailable


def mounts(cameras: int) -> list[str]:
    return [f"/cam{i}" for i in range(1, cameras + 1)]


def require_peer() -> None:
    """Exit with the install hint when ``/usr/bin/python3`` cannot run gst-rtsp-server."""
    reason = rtsp_peer_unavailable()
    if reason:
        raise SystemExit(
            f"--source rtsp needs the gst-rtsp-server peer ({reason}); install it with "
            f"`make peers` (apt-get install {APT_PACKAGES}) or run with --source synthetic"
        )


@contextmanager
def serving(clip: Path, cameras: int) -> Iterator[RtspServer]:
    """A started server with ``/cam1``..``/camN`` all looping ``clip``; stopped (by its own
    process handle: SIGTERM, then SIGKILL) on the way out, whatever happened."""
    server = RtspServer(dict.fromkeys(mounts(cameras), clip), loop=True)
    try:
        server.start()
        yield server
    finally:
        server.close()


def server_cpu_s(server: RtspServer) -> float | None:
    """User + system CPU seconds of the server process so far (not counted in P2's figure)."""
    pid = server.pid
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
