#!/usr/bin/env bash
# Prints an Arm /proc/cpuinfo (Neoverse-V2 cores, one per host CPU) for running arm64 builds of
# ONNX Runtime under qemu-user on an x86 host: its CPU detection crashes on the host's x86
# /proc/cpuinfo, so test-install.sh and bench/arm64-bf16-drift.sh bind this one over it.
set -euo pipefail
for i in $(seq 0 $(($(nproc) - 1))); do
    printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm bf16\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\nCPU revision\t: 1\n\n' "$i"
done
