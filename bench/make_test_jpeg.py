#!/usr/bin/env python3
"""Write a deterministic, textured 1920x1080 RGB JPEG (quality 90) for preprocessing benchmarks.

Usage: python bench/make_test_jpeg.py OUT.jpg [--width 1920 --height 1080 --seed 0]
"""

import argparse

import numpy as np
from PIL import Image, ImageDraw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    w, h = a.width, a.height
    rng = np.random.default_rng(a.seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([
        255 * x / (w - 1),
        255 * y / (h - 1),
        127.5 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0),
    ], axis=-1) + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    pil = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(pil)
    for _ in range(60):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, 400)), y0 + int(rng.integers(20, 300))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([x0, y0, x1, y1], fill=col)
    pil.save(a.out, quality=90)
    print(f"wrote {a.out} ({w}x{h})")


if __name__ == "__main__":
    main()
