#!/usr/bin/env python3
"""What rules and publishing cost a stream, end to end: frames/s of a file stream without rules and
without MQTT against the same stream with 10 zones, 10 lines and MQTT on (a local mosquitto), measured
side by side, runs interleaved.

Usage: python3 bench/events_cost.py [--bin target/release/intelligent-video] [--model models/fixtures/tiny-track]
           [--loops 20] [--runs 5] [--keep DIR]
  (python3 with numpy, ffmpeg, Debian's mosquitto)

Makes bench/track_clips.py's `moving` clip (40 frames, 320x240: a red square crossing, a blue disc moving
down), loops it --loops times into one file, starts two daemons on --model (one plain, one with [mqtt]
pointing at a mosquitto started here on a free port), and --runs times, alternating, PUTs the clip as a
file stream on each (the second with 10 zones and 10 lines) and times PUT -> the end of the stream's
event body (all frames processed). Prints each run and the median frames/s of each side and their ratio.
The tiny model makes detection cheap, so rules and publishing weigh more here than with a real model.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ivclient import UnixConnection, daemon_env, free_port  # noqa: E402
import track_clips  # noqa: E402

ROOT = os.path.dirname(HERE)
QUERIES = ["a red square", "a blue disc"]


def rules():
    zones = {f"zone-{i}": {"polygon": [[(i % 5) * 0.2, (i // 5) * 0.5], [(i % 5) * 0.2 + 0.18, (i // 5) * 0.5],
                                       [(i % 5) * 0.2 + 0.18, (i // 5) * 0.5 + 0.45], [(i % 5) * 0.2, (i // 5) * 0.5 + 0.45]],
                           "loiter_s": 2}
             for i in range(10)}
    lines = {f"line-{i}": {"points": [[0.05 + i * 0.09, 0.0], [0.05 + i * 0.09, 1.0]]} for i in range(10)}
    return zones, lines


class Daemon:
    def __init__(self, binary, model, tmp, roots, config):
        os.makedirs(tmp, exist_ok=True)
        self.sock = os.path.join(tmp, "d.sock")
        port = free_port()
        env = daemon_env(model, tmp, self.sock, port, {"IV_STREAM_FILE_ROOTS": json.dumps(roots)})
        args = [binary, "serve"]
        if config:
            path = os.path.join(tmp, "config.toml")
            with open(path, "w") as f:
                f.write(config)
            args += ["--config", path]
        self.log = open(os.path.join(tmp, "daemon.log"), "w")
        self.p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.time() + 120
        while time.time() < end:
            if self.p.poll() is not None:
                sys.exit(f"events_cost.py: the daemon exited ({self.p.returncode}); see {self.log.name}")
            try:
                if self.req("GET", "/v1/streams")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit("events_cost.py: the daemon did not become ready")

    def req(self, method, target, body=None):
        c = UnixConnection(self.sock, 30)
        c.request(method, target, body=body, headers={"content-type": "application/json"} if body else {})
        r = c.getresponse()
        return r.status, r.read()

    def run(self, name, body, keep=False):
        """Seconds from PUT to the end of the stream's event body, and its frame count; the stream is
        deleted unless `keep`."""
        t0 = time.perf_counter()
        status, text = self.req("PUT", f"/v1/streams/{name}", json.dumps(body))
        if status != 201:
            sys.exit(f"PUT {name}: {status} {text[:300]!r}")
        c = UnixConnection(self.sock, 300)
        c.request("GET", f"/v1/streams/{name}/events?since=0")
        r = c.getresponse()
        frames = 0
        for line in r:
            ev = json.loads(line) if line.strip() else {}
            frames += "frame" in ev
            if ev.get("state") == "failed":
                sys.exit(f"stream {name} failed: {line!r}")
        elapsed = time.perf_counter() - t0
        if not keep:
            self.req("DELETE", f"/v1/streams/{name}")
        return elapsed, frames

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)
        self.log.close()


def broker(tmp):
    port = free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(("user root\n" if os.geteuid() == 0 else "") + f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    p = subprocess.Popen(["/usr/sbin/mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.1)
    sys.exit("events_cost.py: mosquitto did not start (apt install mosquitto)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/intelligent-video"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/fixtures/tiny-track"))
    ap.add_argument("--loops", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep")
    a = ap.parse_args()
    tmp = a.keep or tempfile.mkdtemp(prefix="iv-events-cost-")
    clips = os.path.join(tmp, "clips")
    track_clips.make("moving", clips)
    long = os.path.join(clips, "long.mkv")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(a.loops - 1), "-i",
                    os.path.join(clips, "moving.mkv"), "-c", "copy", long], check=True)
    mq, port = broker(tmp)
    plain = Daemon(a.bin, a.model, os.path.join(tmp, "plain"), [clips], None)
    mqtt = f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nhome_assistant = true\n'
    ruled = Daemon(a.bin, a.model, os.path.join(tmp, "ruled"), [clips], mqtt)
    zones, lines = rules()
    base = {"url": long, "queries": QUERIES, "threshold": 0.3}
    sides = {"plain": [], "rules+mqtt": []}
    try:
        for i in range(a.runs):
            for side, d, body in [("plain", plain, base), ("rules+mqtt", ruled, {**base, "zones": zones, "lines": lines})]:
                s, n = d.run(f"{side.replace('+', '-')}-{i}", body)
                sides[side].append(n / s)
                print(f"run {i} {side:10s} {n} frames in {s:.3f} s: {n / s:.1f} frames/s", flush=True)
        _, events = ruled.req("GET", "/metrics")
        delivered = [l for l in events.decode().splitlines() if l.startswith("iv_sink_delivered_total")]
        print("ruled daemon:", "; ".join(delivered))
    finally:
        plain.stop()
        ruled.stop()
        mq.terminate()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    p, r = statistics.median(sides["plain"]), statistics.median(sides["rules+mqtt"])
    print(f"median frames/s: plain {p:.1f}, rules+mqtt {r:.1f}; rules+mqtt/plain = {r / p:.4f} "
          f"({(p / r - 1) * 100:+.2f}% frame time)")


if __name__ == "__main__":
    main()
