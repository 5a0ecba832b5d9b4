#!/usr/bin/env python3
"""Tracking benchmark: CLEAR-MOT and IDF1 of the daemon's stream tracks on synthetic clips with ground truth.

Usage: python3 bench/tracking.py [--bin target/release/intelligent-video] [--model models/fixtures/tiny-track]
           [--kinds moving fast ...] [--threshold 0.3] [--settings '{"nms": 0.3}'] [--env IV_KEY=VALUE ...]
           [--iou 0.5] [--keep DIR] [--json]
  (python3 with numpy and motmetrics: pip install numpy motmetrics; ffmpeg)

Writes the clips of bench/track_clips.py (all kinds by default) into a temporary folder, starts the daemon
on the tiny-track model with that folder as its only `stream_file_roots`, and for each clip PUTs a file
stream {"url": <clip path>, "queries": ["a red square", "a blue disc"], "threshold": 0.3} (plus the JSON
of --settings merged into the body), follows /v1/streams/NAME/events?since=0 until the stream ends, and
scores the frame events with bench/track_metrics.py (IoU 0.5, a detection matching only its own label).
Prints a markdown table (clip kind | MOTA | IDF1 | ID switches | FP | misses, then the ID switches' frames)
and the tracking cost when the daemon's /metrics has a tracking-time metric (a name holding "track").
--env passes daemon settings (e.g. IV_STREAM_TRACK_MATCH_IOU=0.2); --keep keeps clips, events and the
daemon log in DIR; --json also prints each clip's full metrics object.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
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


class Daemon:
    def __init__(self, binary, model, tmp, roots, env):
        self.sock = os.path.join(tmp, "d.sock")
        self.port = free_port()
        e = daemon_env(model, tmp, self.sock, self.port, {"IV_STREAM_FILE_ROOTS": json.dumps(roots), **env})
        self.log_path = os.path.join(tmp, "daemon.log")
        self.log = open(self.log_path, "w")
        try:
            self.p = subprocess.Popen([binary, "serve"], env=e, stdout=subprocess.DEVNULL, stderr=self.log)
        except OSError as err:
            sys.exit(f"tracking.py: cannot start {binary}: {err} (build it, or pass --bin)")
        end = time.time() + 120
        while time.time() < end:
            if self.p.poll() is not None:
                sys.exit(f"tracking.py: the daemon exited ({self.p.returncode}):\n{self.tail()}")
            try:
                if self.metrics_text(timeout=2) is not None and os.path.exists(self.sock):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"tracking.py: the daemon did not become ready in 120 s:\n{self.tail()}")

    def tail(self):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-20:])

    def metrics_text(self, timeout=5):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("GET", "/api/health")
        r = c.getresponse()
        r.read()
        if r.status != 200:
            return None
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read().decode()
        return body if r.status == 200 else ""

    def req(self, method, target, body=None, timeout=30):
        c = UnixConnection(self.sock, timeout)
        c.request(method, target, body=body, headers={"content-type": "application/json"} if body else {})
        r = c.getresponse()
        return r.status, r.read()

    def follow(self, name, out_path, timeout=300):
        """Writes the stream's event lines (replayed from frame 0, then live) to out_path until the body
        ends (the stream has finished, failed or been deleted). Returns the number of frame events."""
        c = UnixConnection(self.sock, 60)
        c.request("GET", f"/v1/streams/{name}/events?since=0")
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET /v1/streams/{name}/events answered {r.status}: {r.read()[:300]!r}")
        frames, end = 0, time.time() + timeout
        with open(out_path, "w") as out:
            while time.time() < end:
                line = r.readline()
                if not line:
                    break
                line = line.decode().strip()
                if not line:
                    continue
                out.write(line + "\n")
                ev = json.loads(line)
                if "frame" in ev:
                    frames += 1
                elif ev.get("state") in ("failed", "error"):
                    raise RuntimeError(f"stream {name} failed: {line}")
            else:
                raise RuntimeError(f"stream {name}: events still coming after {timeout} s")
        return frames

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def metric_sums(text, stream):
    """{metric name: value} of the lines labelled stream="NAME" (histogram _sum/_count included)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or f'stream="{stream}"' not in line:
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{[^}]*\}\s+(\S+)", line)
        if m and "_bucket" not in m.group(1):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def tracking_cost(before, after):
    """Mean tracking time per frame and its share of the end-to-end time, when a metric tells it."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    track = [k[:-4] for k in d if "track" in k and k.endswith("_sum") and k[:-4] + "_count" in d]
    e2e = "iv_stream_end_to_end_latency_seconds"
    if not track:
        return None
    k = track[0]
    n = d[k + "_count"]
    if n <= 0:
        return None
    per = d[k + "_sum"] / n
    share = None
    if d.get(e2e + "_count", 0) > 0:
        share = per / (d[e2e + "_sum"] / d[e2e + "_count"])
    return {"metric": k, "mean_s": per, "share_of_end_to_end": share}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/intelligent-video"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/fixtures/tiny-track"))
    ap.add_argument("--kinds", nargs="+", default=track_clips.KINDS, choices=track_clips.KINDS)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--settings", default="{}", help="JSON object merged into each stream's PUT body")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="daemon environment")
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--keep", help="keep clips, events and the daemon log in this folder")
    ap.add_argument("--json", action="store_true", help="also print each clip's metrics object")
    args = ap.parse_args()
    try:
        settings = json.loads(args.settings)
        assert isinstance(settings, dict)
    except (json.JSONDecodeError, AssertionError):
        sys.exit(f"tracking.py: --settings must be a JSON object, got {args.settings!r}")
    env = {}
    for kv in args.env:
        k, sep, v = kv.partition("=")
        if not sep:
            sys.exit(f"tracking.py: --env takes KEY=VALUE, got {kv!r}")
        env[k] = v
    try:
        import motmetrics  # noqa: F401
    except ImportError as e:
        sys.exit(f"tracking.py: py-motmetrics is needed ({e}): pip install motmetrics")

    tmp = os.path.realpath(tempfile.mkdtemp(prefix="iv-tracking-"))
    clips = os.path.join(tmp, "clips")
    events_dir = os.path.join(tmp, "events")
    os.makedirs(events_dir)
    for kind in args.kinds:
        track_clips.make(kind, clips)
    d = Daemon(os.path.abspath(args.bin), os.path.abspath(args.model), tmp, [clips], env)
    rows, costs = [], []
    try:
        for kind in args.kinds:
            name = kind.replace("_", "-")
            body = {"url": os.path.join(clips, f"{kind}.mkv"), "queries": QUERIES, "threshold": args.threshold}
            body.update(settings)
            before = metric_sums(d.metrics_text() or "", name)
            status, answer = d.req("PUT", f"/v1/streams/{name}", json.dumps(body))
            if status not in (200, 201):
                sys.exit(f"tracking.py: PUT /v1/streams/{name} answered {status}: {answer[:500]!r}")
            events = os.path.join(events_dir, f"{kind}.jsonl")
            t0 = time.time()
            n = d.follow(name, events)
            wall = time.time() - t0
            after = metric_sums(d.metrics_text() or "", name)
            cost = tracking_cost(before, after)
            if cost:
                costs.append((kind, cost))
            r = subprocess.run([sys.executable, os.path.join(HERE, "track_metrics.py"), "--gt",
                                os.path.join(clips, f"{kind}.gt.json"), "--events", events, "--iou", str(args.iou)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"tracking.py: track_metrics.py failed on {kind}: {r.stderr.strip()}")
            m = json.loads(r.stdout)
            m["event_frames"], m["wall_s"] = n, round(wall, 2)
            rows.append((kind, m))
            if args.json:
                print(json.dumps(m))
    finally:
        d.stop()
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nsettings: threshold {args.threshold}, extra {json.dumps(settings)}, env {json.dumps(env)}; "
          f"model {os.path.relpath(os.path.abspath(args.model), ROOT)}; IoU {args.iou}\n")
    print("| clip kind | MOTA | IDF1 | ID switches | FP | misses | ID switches at (frame: from→to) |")
    print("|---|---|---|---|---|---|---|")
    for kind, m in rows:
        sw = ", ".join(f"{e['frame']}: {e['from'].split('#')[-1] if e['from'] else '-'}→{e['to'].split('#')[-1]}"
                       for e in m["switch_events"])
        f = lambda v: "n/a" if v is None else f"{v:.3f}"
        print(f"| {kind} | {f(m['mota'])} | {f(m['idf1'])} | {m['id_switches']} | {m['false_positives']} | "
              f"{m['misses']} | {sw} |")
    if costs:
        for kind, c in costs:
            share = "" if c["share_of_end_to_end"] is None else f", {100 * c['share_of_end_to_end']:.2f}% of end-to-end"
            print(f"tracking cost ({kind}, {c['metric']}): {1e6 * c['mean_s']:.1f} µs/frame{share}")
    else:
        print("\ntracking cost: not reported (no tracking-time metric with a name holding \"track\" in /metrics)")


if __name__ == "__main__":
    main()
