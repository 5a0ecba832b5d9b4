#!/usr/bin/env python3
"""An MJPEG-over-HTTP camera for the stream tests: serves the given JPEG files in a loop, 10 per
second, as multipart/x-mixed-replace at http://127.0.0.1:PORT/video (the format of most IP
cameras' MJPEG URLs). Prints "ready" once listening.

Usage: python3 mjpeg_server.py PORT FRAME.jpg [FRAME.jpg ...]"""
import http.server
import sys
import time

PORT = int(sys.argv[1])
FRAMES = [open(p, "rb").read() for p in sys.argv[2:]]


class Camera(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/video":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        try:
            while True:
                jpeg = FRAMES[i % len(FRAMES)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                self.wfile.write(b"Content-Length: %d\r\n\r\n" % len(jpeg))
                self.wfile.write(jpeg + b"\r\n")
                self.wfile.flush()
                i += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Camera)
print("ready", flush=True)
server.serve_forever()
