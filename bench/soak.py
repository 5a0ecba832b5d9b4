#!/usr/bin/env python3
"""Soak test of the daemon: cycles of (cold cache → start → mixed malformed + valid traffic from
several clients with health polling → SIGTERM), with core dumps enabled. Reports per cycle the exit
status (a signal is a crash), answers by status and error kind, health failures, RSS, and whether
any answer was wrong (a valid request must be 200 with detections; a malformed one must get its
documented 4xx). Runs against 127.0.0.1 and a Unix socket in a temporary folder only.

Usage: bench/soak.py [--cycles N] [--seconds S] [--clients C] [--bin PATH] [--model DIR]
                     [--rewrite-library LIBONNXRUNTIME]
Exit status 0 when no cycle crashed and every answer was as documented.

--rewrite-library: each cycle's daemon loads a private copy of that ONNX Runtime library, and halfway
through the traffic the copy is rewritten in place with its own bytes (what `cp` onto a loaded library
does). The expected end of the cycle is then the library guard's exit status 75, not a signal; the
summary counts how often the guard won against a crash.
"""
import argparse
import collections
import http.client
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivclient import UnixConnection, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requests_mix(images):
    """(name, method, target, headers, body, expected statuses, expected kind or None)."""
    good = [
        ("valid", "POST", "/v1/detect?" + urllib.parse.urlencode([("query", "a cat"), ("query", "a dog"), ("threshold", "0.1")]),
         {"content-type": "image/png"}, img, {200}, None)
        for img in images
    ]
    png = images[0]
    bad = [
        ("truncated png", "POST", "/v1/detect?query=a", {"content-type": "image/png"}, png[: len(png) // 2], {400}, "invalid_image"),
        ("garbage", "POST", "/v1/detect?query=a", {"content-type": "image/png"}, os.urandom(2000), {400}, "unsupported_image_format"),
        ("bad escape", "POST", "/v1/detect?query=%ZZ", {"content-type": "image/png"}, png, {400}, "invalid_query_string"),
        ("no query", "POST", "/v1/detect", {"content-type": "image/png"}, png, {400}, "missing_query"),
        ("too many queries", "POST", "/v1/detect?" + "&".join(f"query=q{i}" for i in range(100)), {"content-type": "image/png"}, png, {400}, "too_many_queries"),
        ("bad json", "POST", "/v1/detect", {"content-type": "application/json"}, b"{not json", {400}, "invalid_json"),
        ("bad raw", "POST", "/v1/detect?query=a&width=10&height=10", {"content-type": "application/x-raw-rgb"}, b"\0" * 299, {400}, "invalid_raw_frame"),
        ("unknown route", "GET", "/v1/nope", {}, None, {404}, "not_found"),
    ]
    return good, bad


def client(sock_path, good, bad, stop, tally, wrong, lock, seed):
    rnd = random.Random(seed)
    while not stop.is_set():
        name, method, target, headers, body, statuses, kind = rnd.choice(good) if rnd.random() < 0.5 else rnd.choice(bad)
        try:
            c = UnixConnection(sock_path)
            c.request(method, target, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            c.close()
            got_kind = None
            if r.status != 200:
                try:
                    got_kind = json.loads(data)["error"]["kind"]
                except Exception:
                    got_kind = "?"
            ok = r.status in statuses or (r.status == 503 and got_kind == "queue_full")
            if ok and kind is not None and r.status != 503:
                ok = got_kind == kind
            if ok and r.status == 200:
                ok = isinstance(json.loads(data).get("detections"), list)
            with lock:
                tally[(r.status, got_kind or "ok")] += 1
                if not ok:
                    wrong.append(f"{name}: {r.status} {data[:200]!r}")
        except Exception as e:  # a dropped connection is a finding, not a crash of the harness
            with lock:
                tally[("error", type(e).__name__)] += 1


def health_poller(port, stop, result):
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/api/health")
            r = c.getresponse()
            r.read()
            c.close()
            result["polls"] += 1
            if r.status != 200:
                result["not_200"] += 1
        except Exception:
            result["failures"] += 1
        time.sleep(0.1)


def rss(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) // 1024
    except OSError:
        pass
    return out


def cycle(args, images, n):
    work = tempfile.mkdtemp(prefix="iv-soak-")
    sock_path = os.path.join(work, "d.sock")
    port = free_port()
    env = dict(os.environ, IV_MODEL=args.model, IV_SOCKET_PATH=sock_path, IV_HTTP_ADDR=f"127.0.0.1:{port}",
               IV_CACHE_DIR=os.path.join(work, "cache"), IV_WARMUP_ITERATIONS="1", IV_LOG_FORMAT="text",
               IV_MAX_QUEUE="16", IV_LOG_LEVEL="warn")
    lib_copy = None
    if args.rewrite_library:
        os.makedirs(os.path.join(work, "lib"))
        lib_copy = os.path.join(work, "lib", os.path.basename(args.rewrite_library))
        with open(args.rewrite_library, "rb") as src, open(lib_copy, "wb") as dst:
            dst.write(src.read())
        env["IV_ONNXRUNTIME_PATH"] = lib_copy
    log = open(os.path.join(work, "daemon.log"), "wb")
    # Core dumps on: a crash leaves a core (where the kernel's core_pattern says) to inspect.
    proc = subprocess.Popen([args.bin, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=work,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                break
        except Exception:
            pass
        time.sleep(0.1)
    start_rss = rss(proc.pid)
    good, bad = requests_mix(images)
    stop = threading.Event()
    tally, wrong, lock = collections.Counter(), [], threading.Lock()
    health = collections.Counter()
    threads = [threading.Thread(target=client, args=(sock_path, good, bad, stop, tally, wrong, lock, n * 1000 + i)) for i in range(args.clients)]
    threads.append(threading.Thread(target=health_poller, args=(port, stop, health)))
    for t in threads:
        t.start()
    end = time.time() + args.seconds
    rewrite_at = time.time() + args.seconds / 2 if lib_copy else None
    while time.time() < end and proc.poll() is None:
        if rewrite_at is not None and time.time() >= rewrite_at:
            with open(lib_copy, "rb") as f:
                data = f.read()
            with open(lib_copy, "r+b") as f:  # truncate, then write: the same inode, as cp does
                f.truncate(0)
                f.write(data)
            rewrite_at = None
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    end_rss = rss(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    code = proc.returncode
    if lib_copy:
        # The daemon is meant to end itself: status 75 from the library guard.
        crashed = code != 75
    else:
        crashed = (code is not None and code < 0 and -code != signal.SIGTERM) or code not in (0, None)
    report = {
        "cycle": n,
        "exit": code if code is None or code >= 0 else f"signal {signal.Signals(-code).name}",
        "crashed": crashed,
        "requests": sum(tally.values()),
        "answers": {f"{s} {k}": v for (s, k), v in sorted(tally.items(), key=str)},
        "wrong": wrong[:5],
        "wrong_count": len(wrong),
        "health": dict(health),
        "rss_mib": {"start": start_rss, "end": end_rss},
    }
    if report["crashed"]:
        report["log_tail"] = open(os.path.join(work, "daemon.log"), errors="replace").read()[-2000:]
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/intelligent-video"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/fixtures/tiny-a"))
    ap.add_argument("--rewrite-library", help="rewrite a private copy of this libonnxruntime in place mid-cycle")
    args = ap.parse_args()
    if args.rewrite_library:
        args.rewrite_library = os.path.abspath(args.rewrite_library)
    args.bin, args.model = os.path.abspath(args.bin), os.path.abspath(args.model)
    imgdir = os.path.join(ROOT, "models/fixtures/images")
    images = [open(os.path.join(imgdir, f), "rb").read() for f in sorted(os.listdir(imgdir)) if f.endswith(".png")]
    bad_cycles = 0
    for n in range(1, args.cycles + 1):
        r = cycle(args, images, n)
        print(json.dumps(r), flush=True)
        if args.rewrite_library:
            # Probes and clients fail once the daemon has left; only its way of leaving counts.
            bad_cycles += bool(r["crashed"] or r["wrong_count"])
        else:
            bad_cycles += bool(r["crashed"] or r["wrong_count"] or r["health"].get("failures") or r["health"].get("not_200"))
    if args.rewrite_library:
        print(f"soak: {args.cycles} cycles of {args.seconds:.0f} s with the library rewritten in place halfway: "
              f"{args.cycles - bad_cycles} ended by the library guard (exit 75), {bad_cycles} crashed first or answered wrongly")
    else:
        print(f"soak: {args.cycles} cycles of {args.seconds:.0f} s, {bad_cycles} with a crash, a wrong answer or a failed probe")
    sys.exit(1 if bad_cycles else 0)


if __name__ == "__main__":
    main()
