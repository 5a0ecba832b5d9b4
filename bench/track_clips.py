#!/usr/bin/env python3
"""Synthetic tracking clips with ground truth: a red square and a blue disc moving on a noisy background.

Usage: python3 bench/track_clips.py --kind KIND|all --out DIR [--frames 40] [--seed 7]

Writes DIR/KIND.mkv (lossless: FFV1, pix_fmt bgr0, 320x240, 10 fps; raw frames piped to ffmpeg) and
DIR/KIND.gt.json:
    {"kind", "fps": 10, "width": 320, "height": 240,
     "frames": [{"frame": i, "pts_ms": t, "objects": [{"id", "label", "box": [x0, y0, x1, y1],
                                                       "visibility": v, "ignore": true?}]}]}
`frame` is the 0-based index of the frame in the video, `pts_ms` its timestamp. `box` is the object's box
in pixels, clipped to the frame (a detector cannot see past the border). `visibility` is the fraction of
the object's area that is drawn (not outside the frame, not under the other object). An object that is
not visible at all is absent from its frame; one less than half visible carries `"ignore": true`
(don't care, as MOTChallenge's low-visibility boxes: bench/track_metrics.py neither counts it as a miss
nor counts a detection on it as a false positive).

Kinds (labels "a red square" and "a blue disc", the text queries of models/fixtures/tiny-track):
    moving       square right 6.5 px/frame, disc down 4.5 px/frame
    fast         both about 2.5x faster, diagonally, bouncing off the borders
    crossing     on one line towards each other; the (larger) disc passes over the square, hiding it
                 fully for 4 frames (absent from the ground truth then) and partly around them
    passing      two red squares (one label: only motion tells them apart) pass each other on rows 22 px
                 apart, the second over the first, hiding up to 40% of it
    stop_and_go  both move, stop for 8 frames (at different times), move again
    reenter      the square leaves the frame on the right (out from frame 16), and a red square enters from
                 the left 6 frames later, moving right again: a NEW ground-truth id (3). Nothing tells two
                 identical red squares apart and it comes back where no motion model puts the old one, so
                 a box tracker cannot know it is the same object; MOTChallenge-style ground truth would
                 keep one id per physical object, which would ask for re-identification. (Had it come back
                 where it left, after less than the tracker's lost-track time, keeping the id would be
                 right, and that case is `crossing`'s occlusion.)
    dropped      `moving` (the same frames) with frame 20 missing from the video: the positions jump two
                 steps and the timestamps leave a 200 ms gap (video frame 20 has pts 2100 ms)
The background (a fixed seeded noise texture) and the per-frame sensor noise are seeded: reruns write the
same frames.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

W, H, FPS = 320, 240, 10
# A kind's noise is seeded by its index here: new kinds go last, so the others keep their frames.
KINDS = ["moving", "fast", "crossing", "stop_and_go", "reenter", "dropped", "passing"]
SQUARE, DISC = "a red square", "a blue disc"
COLOR = {SQUARE: (215, 35, 30), DISC: (30, 60, 215)}
YY, XX = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5  # pixel centres


def bounce(p0, v, i, lo, hi):
    """Position after i steps of speed v, reflected at lo/hi."""
    span = hi - lo
    x = (p0 - lo + v * i) % (2 * span)
    return lo + (x if x <= span else 2 * span - x)


def stop_go(p0, v, i, stop_at, stop_len):
    moving = i if i <= stop_at else stop_at + max(0, i - stop_at - stop_len)
    return p0 + v * moving


def scene(kind, i):
    """The objects of source frame i, bottom first: [(id, label, cx, cy, size)]."""
    if kind in ("moving", "dropped"):
        return [(1, SQUARE, 30 + 6.5 * i, 70.0, 40.0), (2, DISC, 150.0, 30 + 4.5 * i, 44.0)]
    if kind == "fast":
        return [(1, SQUARE, bounce(40, 16, i, 20, W - 20), bounce(60, 5, i, 20, H - 20), 40.0),
                (2, DISC, bounce(250, -7, i, 22, W - 22), bounce(40, 12, i, 22, H - 22), 44.0)]
    if kind == "crossing":
        return [(1, SQUARE, 100 + 3.5 * i, 120.0, 30.0), (2, DISC, 220 - 3.5 * i, 120.0, 64.0)]
    if kind == "passing":
        return [(1, SQUARE, 70 + 5.0 * i, 100.0, 36.0), (3, SQUARE, 250 - 5.0 * i, 122.0, 36.0),
                (2, DISC, 160.0, 200.0, 40.0)]
    if kind == "stop_and_go":
        return [(1, SQUARE, stop_go(40, 7, i, 14, 8), 80.0, 40.0),
                (2, DISC, 230.0, stop_go(30, 5, i, 9, 8), 44.0)]
    if kind == "reenter":
        cx = 150 + 12 * i if i <= 17 else -40 + 12 * (i - 22)  # out from frame 16, back in from 22
        sid = 1 if i <= 17 else 3
        return [(sid, SQUARE, float(cx), 110.0, 40.0), (2, DISC, 80.0, 40 + 3.0 * i, 44.0)]
    raise ValueError(kind)


def mask(label, cx, cy, size):
    half = size / 2
    if label == SQUARE:
        return (np.abs(XX - cx) < half) & (np.abs(YY - cy) < half)
    return (XX - cx) ** 2 + (YY - cy) ** 2 < half * half


def render(kind, i, base, rng):
    img = base.copy()
    objs = scene(kind, i)
    masks = []
    for _, label, cx, cy, size in objs:
        m = mask(label, cx, cy, size)
        img[m] = COLOR[label]
        masks.append(m)
    img = img + rng.normal(0, 6, img.shape)  # sensor noise, over the objects too
    out = []
    for k, (oid, label, cx, cy, size) in enumerate(objs):
        vis = masks[k].copy()
        for m in masks[k + 1:]:
            vis &= ~m
        area = math.pi * size * size / 4 if label == DISC else size * size
        v = min(1.0, float(vis.sum()) / area)
        if v <= 0:
            continue
        box = [min(max(c, 0.0), lim) for c, lim in
               zip((cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2), (W, H, W, H))]
        o = {"id": oid, "label": label, "box": [round(b, 2) for b in box], "visibility": round(v, 3)}
        if v < 0.5:
            o["ignore"] = True
        out.append(o)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), out


def make(kind, out_dir, frames=40, seed=7):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # `dropped` is `moving` (same background, same noise) less one frame: what differs is the drop alone.
    rng = np.random.default_rng([seed, KINDS.index("moving" if kind == "dropped" else kind)])
    base = 125 + np.array([8.0, -4.0, -6.0]) + rng.normal(0, 28, (H, W, 3))
    base += 20 * (XX / W - 0.5)[..., None]
    source = [i for i in range(frames) if not (kind == "dropped" and i == frames // 2)]
    video = out_dir / f"{kind}.mkv"
    # Timestamps from the source index: a missing source frame leaves a gap (passthrough: no duplicate).
    pts = "+".join(f"gte(N\\,{i - k})" for k, i in enumerate(
        j for j in range(frames) if j not in source)) or "0"
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}",
           "-framerate", str(FPS), "-i", "-", "-vf", f"setpts=(N+{pts})/({FPS}*TB)", "-fps_mode", "passthrough",
           "-c:v", "ffv1", "-pix_fmt", "bgr0", str(video)]
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    except FileNotFoundError:
        sys.exit("track_clips.py: ffmpeg not found (apt install ffmpeg)")
    gt = {"kind": kind, "fps": FPS, "width": W, "height": H, "frames": []}
    for i in range(frames):
        img, objs = render(kind, i, base, rng)  # every source frame, so the noise matches `moving`
        if i not in source:
            continue
        p.stdin.write(img.tobytes())
        gt["frames"].append({"frame": len(gt["frames"]), "pts_ms": i * 1000 // FPS, "objects": objs})
    p.stdin.close()
    if p.wait() != 0:
        sys.exit(f"track_clips.py: ffmpeg failed for {kind}: {' '.join(cmd)}")
    (out_dir / f"{kind}.gt.json").write_text(json.dumps(gt, indent=1) + "\n")
    return video


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", required=True, choices=KINDS + ["all"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    for kind in KINDS if args.kind == "all" else [args.kind]:
        print(make(kind, args.out, args.frames, args.seed))


if __name__ == "__main__":
    main()
