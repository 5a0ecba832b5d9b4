#!/usr/bin/env python3
"""CLEAR-MOT and IDF1 (py-motmetrics) of a daemon stream's frame events against a clip's ground truth.

Usage: python3 bench/track_metrics.py --gt K.gt.json --events events.jsonl [--iou 0.5]
  (pip install motmetrics; ground truth from bench/track_clips.py)

events.jsonl holds the daemon's stream event lines (`GET /v1/streams/NAME/events`), one JSON object per line:
frame events {"stream", "frame", "pts_ms", "width", "height", "detections": [{"label", "score", "box":
[x0, y0, x1, y1], "track_id"}, ...]}; other lines (state changes, anything without "frame") are skipped.
Event frames are aligned with ground-truth frames by `pts_ms` (the daemon's `frame` is a sequence number).
A ground-truth frame without an event counts all its objects as misses.

Matching: per frame, a hypothesis (a detection with its track id) may match only a ground-truth object of
its own label, at IoU >= --iou (distance 1 - IoU; py-motmetrics' MOTAccumulator keeps earlier matches
first, then the Hungarian assignment). Ground-truth objects marked "ignore" (less than half visible) are
don't-care: they are not counted as misses, and a detection of their label lying mostly inside one (its
area at least half inside the box) that matches no other object is dropped rather than counted as a false
positive. Detections without a track id (`"track_id": null`) are not tracks: left out, and counted in
`untracked_detections`.

Prints one JSON object: mota, motp (mean 1 - IoU of the matches, py-motmetrics' convention), idf1,
id_switches, false_positives, misses, gt_objects, frames, per_object_switches {gt id: n}, and the detail
used by the tests and to read a failure: switch_events [{frame, pts_ms, gt_id, from, to}],
duplicate_detections (false positives overlapping an object of their label at IoU >= --iou),
per_object {gt id: {label, gt_frames, matched, hypotheses {hid: frames}, segments [{first_frame,
last_frame, matched, majority}]}} (a segment is a run of frames the object is in view, split where it is
absent or ignored), and event-stream checks (frames_without_events, events_without_gt, duplicate_events,
duplicate_ids_in_frame, untracked_detections). Hypothesis ids are written "LABEL#TRACK_ID".
Exit status 0; 2 with a message on malformed input (including an events file without frame events, or
none at a ground-truth pts_ms); 3 when motmetrics cannot be imported.
"""

import argparse
import json
import math
import sys
from collections import Counter, defaultdict

PROG = "track_metrics.py"


def fail(msg, code=2):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(code)


def box4(v, where):
    if (not isinstance(v, (list, tuple)) or len(v) != 4
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
        fail(f"{where}: a box must be 4 finite numbers [x0, y0, x1, y1], got {v!r}")
    return [float(x) for x in v]


def area(b):
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def inter(a, b):
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(a, b):
    i = inter(a, b)
    u = area(a) + area(b) - i
    return i / u if u > 0 else 0.0


def load_gt(path):
    try:
        with open(path) as f:
            gt = json.load(f)
    except OSError as e:
        fail(f"cannot read the ground truth {path}: {e}")
    except json.JSONDecodeError as e:
        fail(f"{path} is not JSON: {e}")
    if not isinstance(gt, dict) or not isinstance(gt.get("frames"), list) or not gt["frames"]:
        fail(f"{path}: expected {{\"kind\", \"fps\", \"frames\": [...]}} with at least one frame")
    frames = []
    seen_pts = set()
    for n, fr in enumerate(gt["frames"]):
        where = f"{path}: frames[{n}]"
        if not isinstance(fr, dict) or not isinstance(fr.get("frame"), int) or not isinstance(fr.get("pts_ms"), int) \
                or not isinstance(fr.get("objects"), list):
            fail(f"{where}: expected {{\"frame\": int, \"pts_ms\": int, \"objects\": [...]}}, got {str(fr)[:200]}")
        if fr["pts_ms"] in seen_pts:
            fail(f"{where}: pts_ms {fr['pts_ms']} appears twice")
        seen_pts.add(fr["pts_ms"])
        objs = []
        for k, o in enumerate(fr["objects"]):
            ow = f"{where}.objects[{k}]"
            if not isinstance(o, dict) or not isinstance(o.get("id"), (int, str)) or not isinstance(o.get("label"), str):
                fail(f"{ow}: expected {{\"id\", \"label\", \"box\"}}, got {str(o)[:200]}")
            objs.append({"id": o["id"], "label": o["label"], "box": box4(o.get("box"), ow),
                         "ignore": bool(o.get("ignore", False))})
        ids = [o["id"] for o in objs]
        if len(set(ids)) != len(ids):
            fail(f"{where}: an object id appears twice")
        frames.append({"frame": fr["frame"], "pts_ms": fr["pts_ms"], "objects": objs})
    return gt, frames


def load_events(path):
    """{pts_ms: [detections]} of the frame events, and counts of what was odd."""
    by_pts = {}
    stats = Counter()
    try:
        f = open(path)
    except OSError as e:
        fail(f"cannot read the events {path}: {e}")
    with f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{ln}: not a JSON line ({e}): {line[:200]}")
            if not isinstance(ev, dict) or "frame" not in ev:
                continue  # state changes, keepalives
            where = f"{path}:{ln}"
            pts = ev.get("pts_ms")
            dets = ev.get("detections")
            if not isinstance(pts, int) or isinstance(pts, bool) or not isinstance(dets, list):
                fail(f"{where}: a frame event needs an integer \"pts_ms\" and a \"detections\" list: {line[:200]}")
            parsed = []
            for k, d in enumerate(dets):
                dw = f"{where}: detections[{k}]"
                if not isinstance(d, dict) or not isinstance(d.get("label"), str):
                    fail(f"{dw}: expected {{\"label\", \"score\", \"box\", \"track_id\"}}, got {str(d)[:200]}")
                b = d.get("box", d.get("bbox"))
                tid = d.get("track_id")
                if tid is not None and (not isinstance(tid, int) or isinstance(tid, bool)):
                    fail(f"{dw}: track_id must be an integer or null, got {tid!r}")
                parsed.append({"label": d["label"], "score": d.get("score"), "box": box4(b, dw), "track_id": tid})
            if pts in by_pts:
                stats["duplicate_events"] += 1
                continue
            by_pts[pts] = parsed
    return by_pts, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gt", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--iou", type=float, default=0.5, help="IoU a match needs at least (default 0.5)")
    args = ap.parse_args()
    if not 0 < args.iou <= 1:
        fail(f"--iou must be in (0, 1], got {args.iou}")
    try:
        import numpy as np
        import motmetrics as mm
    except ImportError as e:
        fail(f"py-motmetrics is needed ({e}): pip install motmetrics", 3)

    gt, frames = load_gt(args.gt)
    events, stats = load_events(args.events)
    if not events:
        fail(f"{args.events} holds no frame event (lines with \"frame\")")
    gt_pts = {fr["pts_ms"] for fr in frames}
    stats["events_without_gt"] = sum(1 for p in events if p not in gt_pts)
    if stats["events_without_gt"] == len(events):
        fail(f"no frame event's pts_ms is a ground-truth pts_ms (events {sorted(events)[:5]}..., "
             f"ground truth {sorted(gt_pts)[:5]}...): wrong clip?")

    acc = mm.MOTAccumulator(auto_id=False)
    # py-motmetrics stores ids as floats: number them, and name them back from these lists
    onum, hnum = {}, {}
    oname, hname = [None], [None]

    def number(table, names, key):
        if key not in table:
            table[key] = len(names)
            names.append(key)
        return table[key]

    max_d = 1.0 - args.iou
    per_frame_hyps = {}
    gt_of = {}  # gt id -> label
    presence = defaultdict(dict)  # gt id -> frame -> visible (not ignored)
    for fr in frames:
        fid = fr["frame"]
        dets = events.get(fr["pts_ms"])
        if dets is None:
            stats["frames_without_events"] += 1
            dets = []
        normal = [o for o in fr["objects"] if not o["ignore"]]
        ignored = [o for o in fr["objects"] if o["ignore"]]
        for o in fr["objects"]:
            gt_of.setdefault(str(o["id"]), o["label"])
            presence[str(o["id"])][fid] = not o["ignore"]
        hyps, seen = [], Counter()
        for d in dets:
            if d["track_id"] is None:
                stats["untracked_detections"] += 1
                continue
            hid = f"{d['label']}#{d['track_id']}"
            seen[hid] += 1
            if seen[hid] > 1:
                stats["duplicate_ids_in_frame"] += 1
                hid = f"{hid}~{seen[hid]}"
            best = max((iou(d["box"], o["box"]) for o in normal if o["label"] == d["label"]), default=0.0)
            in_ignored = any(o["label"] == d["label"] and area(d["box"]) > 0
                             and inter(d["box"], o["box"]) / area(d["box"]) >= 0.5 for o in ignored)
            if best < args.iou and in_ignored:
                stats["dropped_in_ignored"] += 1
                continue
            hyps.append((hid, d))
        dist = np.full((len(normal), len(hyps)), np.nan)
        for i, o in enumerate(normal):
            for j, (_, d) in enumerate(hyps):
                if d["label"] == o["label"]:
                    dd = 1.0 - iou(o["box"], d["box"])
                    if dd <= max_d + 1e-12:
                        dist[i, j] = dd
        per_frame_hyps[fid] = (fr["pts_ms"], normal, hyps)
        acc.update([number(onum, oname, str(o["id"])) for o in normal],
                   [number(hnum, hname, h) for h, _ in hyps], dist, frameid=fid)

    mh = mm.metrics.create()
    names = ["mota", "motp", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects",
             "num_frames"]
    s = mh.compute(acc, metrics=names, name="clip").iloc[0]

    ev = acc.mot_events.reset_index()
    per_obj = {}
    for oid, label in gt_of.items():
        per_obj[oid] = {"label": label, "gt_frames": sum(presence[oid].values()), "matched": 0,
                             "hypotheses": Counter(), "segments": []}
    matched_at = defaultdict(dict)  # gt id -> frame -> hid
    switch_events = []
    last = {}
    dup = 0
    for row in ev.itertuples(index=False):
        t, fid = row.Type, row.FrameId
        if t in ("MATCH", "SWITCH"):
            oid, hid = oname[int(row.OId)], hname[int(row.HId)]
            matched_at[oid][fid] = hid
            if t == "SWITCH":
                switch_events.append({"frame": int(fid), "pts_ms": per_frame_hyps[fid][0], "gt_id": oid,
                                      "from": last.get(oid), "to": hid})
            last[oid] = hid
        elif t == "FP":
            _, normal, hyps = per_frame_hyps[fid]
            hid = hname[int(row.HId)]
            d = next(d for h, d in hyps if h == hid)
            if any(o["label"] == d["label"] and iou(o["box"], d["box"]) >= args.iou for o in normal):
                dup += 1
    for oid in gt_of:
        po = per_obj[oid]
        for fid, hid in matched_at[oid].items():
            po["matched"] += 1
            po["hypotheses"][hid] += 1
        seg = None
        for fr in frames:
            fid = fr["frame"]
            if presence[oid].get(fid):
                if seg is None:
                    seg = {"first_frame": fid, "last_frame": fid, "matched": 0, "_h": Counter()}
                    po["segments"].append(seg)
                seg["last_frame"] = fid
                if fid in matched_at[oid]:
                    seg["matched"] += 1
                    seg["_h"][matched_at[oid][fid]] += 1
            else:
                seg = None
        for sg in po["segments"]:
            h = sg.pop("_h")
            sg["majority"] = h.most_common(1)[0][0] if h else None
        po["hypotheses"] = dict(po["hypotheses"].most_common())

    def num(v):
        v = float(v)
        return round(v, 4) if math.isfinite(v) else None

    out = {
        "kind": gt.get("kind"),
        "mota": num(s["mota"]), "motp": num(s["motp"]), "idf1": num(s["idf1"]),
        "id_switches": int(s["num_switches"]), "false_positives": int(s["num_false_positives"]),
        "misses": int(s["num_misses"]), "gt_objects": int(s["num_objects"]), "frames": int(s["num_frames"]),
        "per_object_switches": {o: sum(1 for e in switch_events if e["gt_id"] == o) for o in gt_of},
        "switch_events": switch_events,
        "duplicate_detections": dup,
        "per_object": per_obj,
        "frames_without_events": stats["frames_without_events"],
        "events_without_gt": stats["events_without_gt"],
        "duplicate_events": stats["duplicate_events"],
        "duplicate_ids_in_frame": stats["duplicate_ids_in_frame"],
        "untracked_detections": stats["untracked_detections"],
        "dropped_in_ignored": stats["dropped_in_ignored"],
    }
    print(json.dumps(out, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


if __name__ == "__main__":
    main()
