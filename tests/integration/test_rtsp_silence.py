"""A camera that freezes (connection open, no data) fails the read with a timeout."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from ingest.sources import SourceError, open_source, read_packets

pytestmark = pytest.mark.rtsp


def test_frozen_rtsp_camera_times_out(rtsp_server: Any) -> None:
    container = open_source(
        rtsp_server.url("/cam"), kind="rtsp", open_timeout_s=5, read_timeout_s=1
    )
    packets = read_packets(container)
    try:
        for _ in range(20):
            next(packets)
        os.kill(rtsp_server.pid, signal.SIGSTOP)  # the camera hangs, its socket stays open
        frozen_at = time.monotonic()
        try:
            with pytest.raises(SourceError) as err:
                for _ in packets:  # buffered packets drain first, then the read must fail
                    pass
            waited = time.monotonic() - frozen_at
        finally:
            os.kill(rtsp_server.pid, signal.SIGCONT)
    finally:
        container.close()
    assert err.value.reason == "timeout", err.value.message
    assert waited < 5, f"a frozen camera must fail within the read timeout, took {waited:.1f} s"
