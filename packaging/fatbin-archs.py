#!/usr/bin/env python3
"""Which GPU architectures a CUDA library carries code for, read from its `.nv_fatbin` section (no
cuobjdump needed): each fat-binary container's entries are SASS (native code for one sm_XY) or PTX
(compiled by the driver at load for newer GPUs).

Usage: python3 packaging/fatbin-archs.py LIBRARY.so
    e.g. the CUDA provider of PyPI's aarch64 onnxruntime-gpu wheel:
    unzip -j onnxruntime_gpu-1.31.1-*-manylinux_2_34_aarch64.whl \\
        onnxruntime/capi/libonnxruntime_providers_cuda.so -d /tmp/ort
    python3 packaging/fatbin-archs.py /tmp/ort/libonnxruntime_providers_cuda.so

Prints one line per (kind, architecture) with the number of entries. The layout read: a container
header (magic 0xBA55ED50, u16 version, u16 header size, u64 size of its entries), then entries
(u16 kind: 1 PTX, 2 SASS; u16; u32 header size; u64 payload size; ...; u32 sm at offset 28).
"""
import collections
import struct
import subprocess
import sys

MAGIC = 0xBA55ED50


def section(path, name=".nv_fatbin"):
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if f" {name} " in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    sys.exit(f"{path}: no {name} section (no device code)")


def entries(data):
    pos = 0
    while pos + 16 <= len(data):
        magic, _, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            pos += 8  # containers are 8-byte aligned
            continue
        e, end = pos + header, pos + header + size
        while e + 32 <= end:
            kind, _, eheader, payload = struct.unpack_from("<HHIQ", data, e)
            yield {1: "PTX", 2: "SASS"}.get(kind, f"kind{kind}"), struct.unpack_from("<I", data, e + 28)[0]
            if eheader == 0:
                break
            e += eheader + payload
        pos = end


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    offset, size = section(sys.argv[1])
    with open(sys.argv[1], "rb") as f:
        f.seek(offset)
        data = f.read(size)
    for (kind, sm), n in sorted(collections.Counter(entries(data)).items()):
        print(f"{kind} sm_{sm}: {n} entries")


if __name__ == "__main__":
    main()
