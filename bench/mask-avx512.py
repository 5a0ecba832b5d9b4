#!/usr/bin/env python3
"""Writes a copy of libonnxruntime.so whose kernel dispatch does not see AVX-512, to measure ONNX
Runtime's AVX2 kernels on an AVX-512 host (measurement only: never install the copy).

Usage: bench/mask-avx512.py SRC_LIBRARY DST_LIBRARY

Why: an x86-64 CPU cannot be made to hide AVX-512 from user code without CPUID faulting, which
most VMs lack. ONNX Runtime's MLAS (and its CPUIDInfo) enable their AVX-512 kernels only when XCR0,
read with `xgetbv`, says the OS saves the AVX-512 state (bits 5-7). This script patches the copy so
that every such read drops those bits:
  - `xgetbv; mov %eax,%eax` (0f 01 d0 89 c0) becomes `xgetbv; and $0x1f,%al` (0f 01 d0 24 1f):
    the upper half of rax is already zero after xgetbv, so only bits 5-7 change;
  - `and $0xe6,%r9d` (41 81 e1 e6 00 00 00, CPUIDInfo's AVX-512 state mask) keeps 0x06 instead.
Only the `.text` section is searched. It refuses to write anything when no XCR0 read is found
(another build), warns when the CPUIDInfo mask is missing, and says how many sites it changed.
Checked with ONNX Runtime 1.31.1 (PyPI wheel, x86_64): 5 + 1 sites; sampling the running threads'
instructions (gdb) shows ymm FMA kernels with the copy and zmm ones without it. The copy is written
to a new file and renamed over DST (never rewritten in place: DST may be loaded by a process).

Caveat: on CPUs with AVX-VNNI (VEX-encoded, e.g. Alder Lake, Sapphire Rapids, Zen 5) MLAS would still
pick its exact AVX-VNNI u8×s8 kernel, so int8 would not take the saturating `vpmaddubsw` path there.

PyTorch's side of an AVX2 comparison is set by its own variables:
  ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
(`torch.backends.cpu.get_cpu_capability()` then says AVX2).

Same silicon, other kernels: this measures the AVX2 code paths, not an AVX2-only CPU's caches,
clocks or core count.
"""

import os
import struct
import sys

XCR0_READ = bytes.fromhex("0f01d089c0")
XCR0_MASKED = bytes.fromhex("0f01d0241f")
CPUINFO_MASK = bytes.fromhex("4181e1e6000000")
CPUINFO_MASKED = bytes.fromhex("4181e106000000")


def text_section(data: bytes):
    """(offset, size) of `.text` in an ELF64 little-endian file, or None."""
    if len(data) < 64:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return None

    def header(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        end = data.find(b"\0", str_off + name)
        if data[str_off + name:end] == b".text":
            return offset, size
    return None


def patch(data: bytearray, start: int, end: int, old: bytes, new: bytes) -> int:
    n, at = 0, data.find(old, start, end)
    while at >= 0:
        data[at:at + len(old)] = new
        n += 1
        at = data.find(old, at + len(new), end)
    return n


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    try:
        with open(src, "rb") as f:
            data = bytearray(f.read())
    except OSError as e:
        print(f"{src}: {e}", file=sys.stderr)
        return 1
    if os.path.exists(dst) and os.path.samefile(src, dst):
        print(f"{dst}: is the source itself; write the copy elsewhere", file=sys.stderr)
        return 1
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[18] != 0x3E:  # ELF64, EM_X86_64
        print(f"{src}: not an x86-64 ELF library", file=sys.stderr)
        return 1
    text = text_section(data)
    if text is None:
        print(f"{src}: no .text section found", file=sys.stderr)
        return 1
    start, end = text[0], text[0] + text[1]
    xcr0 = patch(data, start, end, XCR0_READ, XCR0_MASKED)
    cpuinfo = patch(data, start, end, CPUINFO_MASK, CPUINFO_MASKED)
    if xcr0 == 0:
        print(f"{src}: no `xgetbv; mov %eax,%eax` in .text; this build reads XCR0 differently", file=sys.stderr)
        return 1
    if cpuinfo == 0:
        print(f"warning: {src}: CPUIDInfo's AVX-512 mask not found; only MLAS's dispatch is masked", file=sys.stderr)
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dst)
    except OSError as e:
        print(f"{dst}: {e}", file=sys.stderr)
        return 1
    print(f"{dst}: XCR0 reads masked at {xcr0} sites, CPUIDInfo mask at {cpuinfo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
