#!/usr/bin/env python3
"""Makes the README's first picture and answer: one synthetic frame (bench/track_clips.py's drawing: red
squares and a blue disc on a noisy background), `intelligent-video detect --draw` of it with the trained
fixture models/fixtures/tiny-track, and a daemon's `/v1/detect` answer for the same JPEG.

Usage: python3 bench/detect_picture.py [--bin target/release/intelligent-video] [--out docs]
  (python3 with numpy, ffmpeg)

Writes OUT/detect-input.jpg (the frame; also what `make run` suggests to send), OUT/detect-drawn.jpg (what
`detect --draw` wrote) and OUT/detect-answer.json (the daemon's answer, pretty-printed, as the README
shows it). Seeded: reruns write the same frame; the boxes are the fixture model's.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import track_clips  # noqa: E402
from events_cost import Daemon  # noqa: E402

ROOT = os.path.dirname(HERE)
MODEL = os.path.join(ROOT, "models/fixtures/tiny-track")
QUERIES = ["a red square", "a blue disc"]
KIND, FRAME = "passing", 3  # two red squares apart and a blue disc, all whole


def frame():
    """Frame FRAME of the KIND clip, drawn as track_clips.make draws it (same seed, same noise)."""
    rng = np.random.default_rng([7, track_clips.KINDS.index(KIND)])
    h, w = track_clips.H, track_clips.W
    base = 125 + np.array([8.0, -4.0, -6.0]) + rng.normal(0, 28, (h, w, 3))
    base += 20 * (track_clips.XX / w - 0.5)[..., None]
    for i in range(FRAME + 1):
        img, _ = track_clips.render(KIND, i, base, rng)
    return img


def write_jpeg(img, path):
    h, w, _ = img.shape
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-i", "-", "-q:v", "2", "-frames:v", "1", path]
    subprocess.run(cmd, input=img.tobytes(), check=True)


def readable(answer):
    """The answer as the README shows it: one line per detection and per other field, values untouched."""
    lines = []
    for k, v in answer.items():
        if k == "detections":
            dets = ",\n".join(f"    {json.dumps(d)}" for d in v)
            lines.append(f'  "detections": [\n{dets}\n  ]')
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/intelligent-video"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    src = os.path.join(a.out, "detect-input.jpg")
    drawn = os.path.join(a.out, "detect-drawn.jpg")
    write_jpeg(frame(), src)
    args = [a.bin, "detect", "--model", MODEL, "--threshold", "0.3", "--nms", "0.3", "--draw", drawn]
    for q in QUERIES:
        args += ["--query", q]
    out = subprocess.run(args + [src], check=True, capture_output=True, text=True)
    print(out.stdout, end="")
    tmp = tempfile.mkdtemp(prefix="iv-detect-picture-")
    try:
        d = Daemon(a.bin, MODEL, tmp, [], None)
        query = urllib.parse.urlencode([("query", q) for q in QUERIES] + [("threshold", "0.3"), ("nms", "0.3")])
        with open(src, "rb") as f:
            from ivclient import UnixConnection
            c = UnixConnection(d.sock, 60)
            c.request("POST", f"/v1/detect?{query}", body=f.read(), headers={"content-type": "image/jpeg"})
            r = c.getresponse()
            answer = json.loads(r.read())
        d.stop()
        if r.status != 200:
            sys.exit(f"detect_picture.py: /v1/detect answered {r.status}: {answer}")
        text = readable(answer)
        with open(os.path.join(a.out, "detect-answer.json"), "w") as f:
            f.write(text)
        print(text, end="")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
