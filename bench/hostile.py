#!/usr/bin/env python3
"""What a hostile local client costs the daemon, measured with one binary per run (run it with the
old and the new binary one after the other to compare): threads, open files and RSS of the daemon
around each scenario, and whether detections still get through. Loopback and a private folder only.

Scenarios (each on a fresh daemon with the tiny-a model):
  followers   a finished file stream; 260 x (connect, GET its events, read the head, close); then
              8 followers of a quiet live stream with max_connections=8; is a detection answered?
  replace     100 x (PUT cam short clip, at once PUT cam long clip), then DELETE
  race        4 clients x 100 random PUT/DELETE of one name: PUTs answered 404, leftovers
  trickle     an RTSP server that answers one byte a second (and closes each connection after
              40 s): how long until the stream shows an error, 30 PUT/DELETE cycles, counts then
              and once the server has closed, and the time SIGTERM takes
  churn       400 x (PUT a stream, DELETE it): RSS before and after
  events      4 streams at threshold 0 with two 1000-byte labels, rings full: RSS

Usage: bench/hostile.py --bin PATH [--old] [SCENARIO ...]
  --old  the binary predates stream_file_roots (its streams may name any file); also sets no key
         it does not know
Needs ffmpeg (test clips). Prints one JSON object per scenario.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivclient import UnixConnection, daemon_env, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models/fixtures/tiny-a")
PHOTO = os.path.join(ROOT, "models/fixtures/images/photo.jpg")
PNG = os.path.join(ROOT, "models/fixtures/images/small_pad.png")


class Daemon:
    def __init__(self, binary, tmp, env):
        self.sock = os.path.join(tmp, "d.sock")
        self.port = free_port()
        e = daemon_env(MODEL, tmp, self.sock, self.port, env)
        self.log = open(os.path.join(tmp, "daemon.log"), "w")
        self.p = subprocess.Popen([binary, "serve"], env=e, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.time() + 60
        while time.time() < end:
            try:
                if self.health(timeout=2) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("daemon did not become healthy")

    def health(self, timeout=5):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("GET", "/api/health")
        r = c.getresponse()
        r.read()
        return r.status

    def req(self, method, target, body=None, ctype="application/json", timeout=30):
        c = UnixConnection(self.sock, timeout)
        c.request(method, target, body=body, headers={"content-type": ctype} if body else {})
        r = c.getresponse()
        return r.status, r.read()

    def detect_status(self):
        try:
            with open(PNG, "rb") as f:
                return self.req("POST", "/v1/detect?query=person&threshold=0", f.read(), "image/png", timeout=20)[0]
        except OSError as e:
            return f"error: {e}"

    def put(self, name, body, timeout=30):
        try:
            return self.req("PUT", f"/v1/streams/{name}", json.dumps(body), timeout=timeout)
        except OSError as e:
            return (f"error: {e}", b"")

    def delete(self, name):
        try:
            return self.req("DELETE", f"/v1/streams/{name}")[0]
        except OSError as e:
            return f"error: {e}"

    def status(self, name):
        s, b = self.req("GET", f"/v1/streams/{name}")
        return json.loads(b) if s == 200 else {}

    def wait_state(self, name, pred, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            s = self.status(name)
            if pred(s):
                return s
            time.sleep(0.2)
        return self.status(name)

    def counts(self):
        pid = self.p.pid
        threads = len(os.listdir(f"/proc/{pid}/task"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024
        return {"threads": threads, "fds": fds, "rss_mb": rss}

    def stop(self):
        t = time.time()
        self.p.send_signal(signal.SIGTERM)
        try:
            code = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            code = "killed after 30 s"
        return code, round(time.time() - t, 2)


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def clips(d):
    short, long = os.path.join(d, "short.mkv"), os.path.join(d, "long.mp4")
    ffmpeg("-i", PHOTO, "-vf", "scale=320:240", "-frames:v", "1", os.path.join(d, "f.png"))
    ffmpeg("-loop", "1", "-framerate", "10", "-i", os.path.join(d, "f.png"), "-frames:v", "8", "-c:v", "ffv1", short)
    ffmpeg("-loop", "1", "-framerate", "10", "-i", os.path.join(d, "f.png"), "-frames:v", "1100",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", long)
    return short, long


def roots_env(args, d):
    return {} if args.old else {"IV_STREAM_FILE_ROOTS": json.dumps([d])}


def scenario_followers(args, tmp, short, _long):
    out = {}
    d = Daemon(args.bin, tmp, {"IV_MAX_CONNECTIONS": "8", **roots_env(args, tmp)})
    d.put("clip", {"url": short, "queries": ["a cat"]})
    d.wait_state("clip", lambda s: s.get("state") == "finished")
    out["before"] = d.counts()
    for _ in range(260):
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.sock)
        s.sendall(b"GET /v1/streams/clip/events HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)
        s.close()
    time.sleep(5)
    out["after_260_finished"] = d.counts()
    out["detect_after_260"] = d.detect_status()
    code, took = d.stop()
    d = Daemon(args.bin, tmp, {"IV_MAX_CONNECTIONS": "8", "IV_STREAM_RECONNECT_MAX_MS": "60000"})
    d.put("quiet", {"url": f"rtsp://127.0.0.1:{free_port()}/x", "queries": ["a cat"]})
    held, codes = [], []
    for _ in range(8):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(d.sock)
        s.sendall(b"GET /v1/streams/quiet/events HTTP/1.1\r\nHost: x\r\n\r\n")
        head = s.recv(4096).split(b" ")
        codes.append(int(head[1]) if len(head) > 1 else 0)
        held.append(s)
    out["quiet_follower_codes"] = codes
    out["detect_with_8_quiet_followers"] = d.detect_status()
    for s in held:
        s.close()
    time.sleep(2)
    out["detect_2s_after_they_left"] = d.detect_status()
    d.stop()
    return out


def scenario_replace(args, tmp, short, long):
    d = Daemon(args.bin, tmp, roots_env(args, tmp))
    d.detect_status()
    out = {"before": d.counts()}
    for _ in range(100):
        d.put("cam", {"url": short, "queries": ["a cat"]})
        d.put("cam", {"url": long, "queries": ["a cat"]})
    d.delete("cam")
    time.sleep(10)
    out["after_100_and_10s"] = d.counts()
    out["sigterm"] = d.stop()
    return out


def scenario_race(args, tmp, short, _long):
    d = Daemon(args.bin, tmp, roots_env(args, tmp))
    out = {"before": d.counts()}
    put_404 = [0]
    lock = threading.Lock()

    def client(seed):
        rnd = random.Random(seed)
        for _ in range(100):
            if rnd.random() < 0.5:
                s, _ = d.put("cam", {"url": short, "queries": ["a cat"]})
                if s == 404:
                    with lock:
                        put_404[0] += 1
            else:
                d.delete("cam")

    ts = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    d.delete("cam")
    time.sleep(10)
    out["puts_answered_404"] = put_404[0]
    out["after_and_10s"] = d.counts()
    d.stop()
    return out


# The trickling server closes each connection after this long.
HOLD_S = 40


def trickler():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(100)
    answer = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n"

    def serve(c):
        try:
            for i in range(HOLD_S):
                c.send(answer[i % len(answer):i % len(answer) + 1])
                time.sleep(1)
            c.shutdown(socket.SHUT_RDWR)
            c.close()
        except OSError:
            pass

    def accept():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def scenario_trickle(args, tmp, _short, _long):
    port = trickler()
    d = Daemon(args.bin, tmp, {})
    d.detect_status()
    out = {"before": d.counts()}
    body = {"url": f"rtsp://127.0.0.1:{port}/cam", "queries": ["a cat"]}
    t = time.time()
    d.put("slow", body)
    s = d.wait_state("slow", lambda s: s.get("last_error"), timeout=30)
    out["first_error_after_s"] = round(time.time() - t, 1) if s.get("last_error") else "none within 30 s"
    out["state_then"] = s.get("state")
    for _ in range(30):
        d.delete("slow")
        d.put("slow", body)
    d.delete("slow")
    time.sleep(2)
    out["after_30_cycles"] = d.counts()
    out["health"] = d.health()
    out["detect"] = d.detect_status()
    time.sleep(HOLD_S + 5)
    out["after_the_server_closed"] = d.counts()
    out["sigterm"] = d.stop()
    return out


def scenario_churn(args, tmp, short, _long):
    d = Daemon(args.bin, tmp, roots_env(args, tmp))
    d.detect_status()
    out = {"before": d.counts()}
    for i in range(400):
        d.put("cam", {"url": short, "queries": ["a cat"]})
        d.wait_state("cam", lambda s: s.get("state") in ("finished", "failed"), timeout=20)
        d.delete("cam")
    time.sleep(3)
    out["after_400"] = d.counts()
    d.stop()
    return out


def scenario_events(args, tmp, _short, long):
    d = Daemon(args.bin, tmp, {"IV_MAX_QUERY_BYTES": "1024", **roots_env(args, tmp)})
    labels = ["a " + "x" * 998, "b " + "y" * 998]
    out = {"before": d.counts()}
    for i in range(4):
        d.put(f"s{i}", {"url": long, "queries": labels, "threshold": 0})
    for i in range(4):
        d.wait_state(f"s{i}", lambda s: s.get("frames", 0) >= 1100 or s.get("state") in ("finished", "failed"),
                     timeout=600)
    out["frames"] = [d.status(f"s{i}").get("frames") for i in range(4)]
    c = UnixConnection(d.sock)
    c.request("GET", "/v1/streams/s0/events?since=0")
    r = c.getresponse()
    line = r.readline()
    out["event_line_bytes"] = len(line)
    out["rings_full"] = d.counts()
    d.stop()
    return out


SCENARIOS = {
    "followers": scenario_followers, "replace": scenario_replace, "race": scenario_race,
    "trickle": scenario_trickle, "churn": scenario_churn, "events": scenario_events,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--old", action="store_true")
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as media:
        short, long = clips(media)
        for name in args.scenarios:
            with tempfile.TemporaryDirectory() as tmp:
                for f in (short, long):
                    os.link(f, os.path.join(tmp, os.path.basename(f)))
                here = [os.path.join(tmp, os.path.basename(f)) for f in (short, long)]
                try:
                    r = SCENARIOS[name](args, tmp, *here)
                except Exception as e:  # a frozen daemon shows up here
                    r = {"error": repr(e)}
                print(json.dumps({"scenario": name, **r}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
