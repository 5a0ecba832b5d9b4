#!/usr/bin/env python3
"""Makes the README's picture of the rules: the stream snapshot of bench/track_clips.py's `moving` clip
with a zone and a line (what `GET /v1/streams/NAME/snapshot.jpg` draws: the zone in amber, the line in
cyan with a square at p1, each detection's box, caption and anchor, the bottom-centre the rules test).

Usage: python3 bench/rules_picture.py [--bin target/release/intelligent-video] [--out docs/rules-snapshot.jpg]
  (python3 with numpy, ffmpeg)

The stream is the one of tests/it/events.rs: line `gate` from (0.5, 0.5) up to (0.5, 0.0), zone `right`
(x >= 0.6, red squares only); the snapshot is the clip's last frame.
"""

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from events_cost import Daemon  # noqa: E402
import track_clips  # noqa: E402

ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/intelligent-video"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/rules-snapshot.jpg"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="iv-rules-picture-")
    try:
        clips = os.path.join(tmp, "clips")
        clip = track_clips.make("moving", clips)
        d = Daemon(a.bin, os.path.join(ROOT, "models/fixtures/tiny-track"), os.path.join(tmp, "d"), [clips], None)
        body = {"url": str(clip), "queries": ["a red square", "a blue disc"], "threshold": 0.3,
                "lines": {"gate": {"points": [[0.5, 0.5], [0.5, 0.0]]}},
                "zones": {"right": {"polygon": [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]],
                                    "labels": ["a red square"]}}}
        try:
            d.run("moving", body, keep=True)  # to the clip's end: the snapshot is its last frame
            status, jpeg = d.req("GET", "/v1/streams/moving/snapshot.jpg")
        finally:
            d.stop()
        if status != 200:
            sys.exit(f"snapshot: {status} {jpeg[:200]!r}")
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "wb") as f:
            f.write(jpeg)
        print(f"wrote {a.out} ({len(jpeg)} bytes)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
