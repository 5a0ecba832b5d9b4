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
It refuses to write anything when the patterns are not found (another build), and says how many
sites it changed. Checked with ONNX Runtime 1.31.1 (PyPI wheel, x86_64): 5 + 1 sites; sampling the
running threads' instructions (gdb) shows ymm FMA kernels with the copy and zmm ones without it.

PyTorch's side of an AVX2 comparison is set by its own variables:
  ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
(`torch.backends.cpu.get_cpu_capability()` then says AVX2).

Same silicon, other kernels: this measures the AVX2 code paths, not an AVX2-only CPU's caches,
clocks or core count.
"""

import sys

XCR0_READ = bytes.fromhex("0f01d089c0")
XCR0_MASKED = bytes.fromhex("0f01d0241f")
CPUINFO_MASK = bytes.fromhex("4181e1e6000000")
CPUINFO_MASKED = bytes.fromhex("4181e106000000")


def patch(data: bytearray, old: bytes, new: bytes) -> int:
    n, at = 0, data.find(old)
    while at >= 0:
        data[at:at + len(old)] = new
        n += 1
        at = data.find(old, at + len(new))
    return n


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = bytearray(f.read())
    if data[:4] != b"\x7fELF" or data[18] != 0x3E:  # e_machine = EM_X86_64
        print(f"{src}: not an x86-64 ELF library", file=sys.stderr)
        return 1
    xcr0 = patch(data, XCR0_READ, XCR0_MASKED)
    cpuinfo = patch(data, CPUINFO_MASK, CPUINFO_MASKED)
    if xcr0 == 0:
        print(f"{src}: no `xgetbv; mov %eax,%eax` found; this build reads XCR0 differently", file=sys.stderr)
        return 1
    with open(dst, "wb") as f:
        f.write(data)
    print(f"{dst}: XCR0 reads masked at {xcr0} sites, CPUIDInfo mask at {cpuinfo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
