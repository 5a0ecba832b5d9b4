#!/usr/bin/python3
"""A local RTSP server for the stream tests: serves a live test pattern (JPEG over RTP) at
rtsp://127.0.0.1:PORT/cam until killed. Prints "ready" once listening.

Usage: /usr/bin/python3 rtsp_server.py PORT
Needs Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and GStreamer's base/good plugins."""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1,format=I420 "
    "! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit("cannot listen")
print("ready", flush=True)
GLib.MainLoop().run()
