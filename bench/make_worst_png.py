#!/usr/bin/env python3
"""Writes the costliest image the default limits allow: a 16-bit RGBA PNG of 6324x6324 (40 M
pixels, just under max_pixels), all zeros, so it compresses to a few hundred KB. Used by
bench/decode-memory.sh. Usage: make_worst_png.py OUT.png [SIDE]"""
import struct
import sys
import zlib


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main() -> None:
    out = sys.argv[1]
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 6324
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    row = b"\x00" + b"\x00" * (side * 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    with open(out, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


if __name__ == "__main__":
    main()
