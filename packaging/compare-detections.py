#!/usr/bin/env python3
"""Compares two detection answers of the same image and queries (one JSON object each, with
"detections": [{label, score, box}]): same count and labels, scores within 1e-4, boxes within
1e-4 x max(width, height). Used by test-install.sh --arch arm64 against the amd64 binary.

Usage: compare-detections.py REFERENCE.json CANDIDATE.json
"""
import json
import sys


def load(path):
    with open(path) as f:
        doc = json.loads(f.readline())
    dets = sorted(doc["detections"], key=lambda d: (-d["score"], d["box"]))
    return doc, dets


def main() -> int:
    ref_doc, ref = load(sys.argv[1])
    got_doc, got = load(sys.argv[2])
    scale = max(ref_doc.get("width", 1), ref_doc.get("height", 1))
    if len(ref) != len(got):
        print(f"{len(got)} detections, expected {len(ref)}")
        return 1
    worst_score = worst_box = 0.0
    for r, g in zip(ref, got):
        if r["label"] != g["label"]:
            print(f"label {g['label']!r}, expected {r['label']!r}")
            return 1
        worst_score = max(worst_score, abs(r["score"] - g["score"]))
        worst_box = max(worst_box, max(abs(a - b) for a, b in zip(r["box"], g["box"])))
    print(f"{len(ref)} detections; max score diff {worst_score:.2e}, max box diff {worst_box:.2e} px")
    if worst_score > 1e-4 or worst_box > 1e-4 * scale:
        print("over the tolerance (score 1e-4, box 1e-4 x max side)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
