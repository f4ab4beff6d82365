"""RTSP camera test peer: serves H.264 from Matroska files with gst-rtsp-server.

Run with Debian's ``/usr/bin/python3`` (it imports ``gi``), never with a venv python::

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 \\
        --mount /cam=clip.mkv [--mount /cam2=other.mkv ...] [--loop]

Each mount gets its own, unshared media factory: every client session runs its own pipeline
and receives the file from its start, with the container's timestamps.

``--loop`` makes a camera run longer than its file: the file replays forever, and the
timestamps keep increasing across each wrap (loop ``n`` starts at ``n`` times the file's
duration), as if the camera had never stopped.

Prints ``READY rtsp://127.0.0.1:PORT`` on stdout once the server listens; exits 0 on SIGTERM
or SIGINT, 2 when it cannot listen.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# Before any GstRtspServer class is initialised (subclassing RTSPMedia below does that): its
# "handle-message" signal needs GstMessage's type registered, or every DESCRIBE answers 503.
Gst.init(None)

HOST = "127.0.0.1"
LAUNCH = (
    "( filesrc location={location} ! matroskademux name=demux ! h264parse ! "
    "rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def _segment_seek_event() -> Gst.Event:
    return Gst.Event.new_seek(
        1.0, Gst.Format.TIME, Gst.SeekFlags.SEGMENT, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1
    )


class LoopingMedia(GstRtspServer.RTSPMedia):
    """An RTSPMedia that replays its file forever with continuous timestamps.

    Before the pipeline prerolls, a segment seek to 0 is handed to matroskademux (it defers a
    seek received before it has read the headers), so the file plays in segment mode: at its
    end the demuxer posts SEGMENT_DONE instead of sending EOS, and a non-flushing segment seek
    to 0 starts it again while the running time goes on. GStreamer adds only the last frame's
    *start* to the next segment's base, which would repeat one timestamp per wrap; a probe in
    front of the payloader sets a pad offset so that loop ``n`` starts at ``n * duration``.
    A flushing seek (a client's PLAY with a range) leaves segment mode: plays to the end then.
    """

    __gtype_name__ = "CctvLoopingMedia"

    def configure_looping(self) -> None:
        self._loops = 0
        bin_ = self.get_element()
        sink = bin_.get_by_name("pay0").get_static_pad("sink")
        sink.get_peer().add_probe(
            Gst.PadProbeType.EVENT_DOWNSTREAM | Gst.PadProbeType.EVENT_FLUSH,
            self._on_event,
            sink,
        )
        bin_.get_by_name("demux").send_event(_segment_seek_event())

    def _on_event(self, pad: Gst.Pad, info: Gst.PadProbeInfo, sink: Gst.Pad) -> Gst.PadProbeReturn:
        event = info.get_event()
        if event.type == Gst.EventType.FLUSH_STOP:
            self._loops = 0
            sink.set_offset(0)
        elif event.type == Gst.EventType.SEGMENT:
            segment = event.parse_segment()
            duration = segment.duration
            if duration == Gst.CLOCK_TIME_NONE or duration <= 0:
                ok, duration = pad.peer_query_duration(Gst.Format.TIME)
                if not ok or duration <= 0:
                    return Gst.PadProbeReturn.OK
            offset = self._loops * duration - segment.base
            if offset != sink.get_offset():
                sink.set_offset(offset)
        return Gst.PadProbeReturn.OK

    def do_handle_message(self, message: Gst.Message) -> bool:
        if message.type == Gst.MessageType.SEGMENT_DONE:
            # End of the file: go round again. The demuxer's task is paused until this seek,
            # so the probe sees the new loop count with the next segment.
            self._loops = getattr(self, "_loops", 0) + 1
            element = self.get_element()
            pipeline = element.get_parent() if element is not None else None
            if pipeline is not None:
                pipeline.send_event(_segment_seek_event())
            return True
        return GstRtspServer.RTSPMedia.do_handle_message(self, message)


def _on_media_configure(
    _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia
) -> None:
    if isinstance(media, LoopingMedia):
        media.configure_looping()


def launch_quote(value: str) -> str:
    """Quote a property value for gst_parse_launch (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_mount(text: str) -> tuple[str, str]:
    mount, sep, path = text.partition("=")
    if not sep or not mount.startswith("/") or not path:
        raise argparse.ArgumentTypeError(f"expected /mount=PATH.mkv, got {text!r}")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return mount, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RTSP camera test peer (gst-rtsp-server)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--mount", type=parse_mount, action="append", required=True, metavar="/PATH=FILE.mkv"
    )
    parser.add_argument("--loop", action="store_true", help="replay each file forever")
    args = parser.parse_args(argv)

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for mount, path in args.mount:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(LAUNCH.format(location=launch_quote(path)))
        factory.set_shared(False)  # one pipeline per session: each client starts at 0
        if args.loop:
            factory.set_media_gtype(LoopingMedia.__gtype__)
            factory.connect("media-configure", _on_media_configure)
        mounts.add_factory(mount, factory)

    try:
        source_id = server.attach(None)
    except GLib.Error as exc:
        print(f"ERROR cannot listen on {HOST}:{args.port}: {exc.message}", file=sys.stderr)
        return 2
    if not source_id:
        print(f"ERROR cannot listen on {HOST}:{args.port}", file=sys.stderr)
        return 2

    main_loop = GLib.MainLoop()

    def quit_loop() -> bool:
        main_loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_loop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_loop)

    print(f"READY rtsp://{HOST}:{args.port}", flush=True)
    main_loop.run()

    # Stop listening, then drop every client session (closes the connections, tears down
    # the pipelines) before the interpreter exits.
    GLib.source_remove(source_id)
    server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
