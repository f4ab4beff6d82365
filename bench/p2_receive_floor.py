"""P2 floor: what receiving one RTSP stream costs before cctv-vault does anything with it.

Opens the same 720p15 ~4 Mbit/s looping RTSP camera that P2 uses (gst-rtsp-server on
loopback, TCP interleaved) with PyAV and only demuxes packets for a fixed wall time, in three
variants: with PyAV's ``timeout=`` (an interrupt callback), with FFmpeg's socket ``timeout``
option only, and with neither. Prints % of one core per stream (median of ``--rounds``). This is
the part of P2 that FFmpeg's RTSP/RTP stack costs; P2 minus this is cctv-vault's own share.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import av

from bench._common import OUT
from bench._media import encode_clip
from bench.p2_live_streams import CLIP
from tests.support.rtsp import RtspServer

OPTIONS = {"rtsp_transport": "tcp", "analyzeduration": "500000", "probesize": "65536"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receive(url: str, variant: str, seconds: float) -> tuple[float, int]:
    options = dict(OPTIONS)
    kwargs: dict[str, object] = {}
    if variant == "pyav-timeout":
        kwargs["timeout"] = (5.0, 5.0)
    elif variant == "socket-timeout":
        options["timeout"] = "5000000"
    container = av.open(url, options=options, **kwargs)
    try:
        stream = container.streams.video[0]
        start, cpu0, packets = time.monotonic(), _cpu(), 0
        for _packet in container.demux(stream):
            packets += 1
            if time.monotonic() - start >= seconds:
                break
        return (_cpu() - cpu0) / seconds * 100, packets
    finally:
        container.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p2_receive_floor", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    clip = encode_clip(OUT / "p2-clip-720p15-4mbit-60s.mkv", **CLIP)  # type: ignore[arg-type]
    variants = ["pyav-timeout", "socket-timeout", "none"]
    results: dict[str, list[float]] = {v: [] for v in variants}
    with RtspServer({"/cam": Path(clip)}, loop=True) as server:
        if not server.running:
            server.start()
        for _ in range(args.rounds):
            for variant in variants:
                pct, packets = receive(server.url("/cam"), variant, args.seconds)
                results[variant].append(pct)
                print(f"  {variant:15} {pct:5.2f}% of a core ({packets} packets)", flush=True)
    print("\nreceive only, % of one core per 720p15 ~4 Mbit/s RTSP stream (median):")
    for variant in variants:
        print(f"  {variant:15} {statistics.median(results[variant]):5.2f}%")


if __name__ == "__main__":
    main()
