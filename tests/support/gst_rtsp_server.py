"""A tiny live RTSP server for the live-source tests, run with Debian's /usr/bin/python3 (not the venv).

It serves `rtsp://127.0.0.1:PORT/cam`: a moving test pattern, 64x48 at 10 fps, H.264 over RTP, shared by
all clients and produced in real time, like a camera. It uses GStreamer's gst-rtsp-server through
PyGObject because that is the RTSP server Debian ships in main (live555's `livemedia-utils` is not in
Debian main, and FFmpeg can push to an RTSP server but not be one).

Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base (videotestsrc)
gstreamer1.0-plugins-good (rtph264pay) gstreamer1.0-plugins-ugly (x264enc).

Usage: `gst_rtsp_server.py PORT` prints "ready PORT" once it listens and serves until killed;
`gst_rtsp_server.py --check` exits 0 when everything it needs is installed, else prints what is missing.
"""

from __future__ import annotations

import sys

ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay")
PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=64,height=48,framerate=10/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def main(argv: list[str]) -> int:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        print(f"missing GStreamer RTSP server bindings: {exc}")
        return 2
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print("missing GStreamer elements: " + ", ".join(missing))
        return 2
    if argv[1:] == ["--check"]:
        return 0

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{argv[1]}")
        return 1
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
