#!/usr/bin/env bash
# Drift of IV_CPU_PRECISION=bf16 against exact fp32 on arm64, measured under qemu-user emulation
# (numbers only: emulated speed means nothing). For each fixture model and image, `bench
# --precision bf16 --json` compares every patch's score and box with the fp32 engine's. Needs root
# (a private mount namespace binds an Arm /proc/cpuinfo), qemu-user-static with binfmt, and
# `make build-arm64`. qemu's default arm64 CPU ("max") has BF16, so the fast-math kernels run.
# Usage: bench/arm64-bf16-drift.sh [MODEL_DIR…]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/aarch64-unknown-linux-gnu/release/intelligent-video
[ -x "$bin" ] || { echo "$bin missing: make build-arm64"; exit 1; }
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(models/fixtures/tiny-a models/fixtures/tiny-b)
cpuinfo=$(mktemp)
trap 'rm -f "$cpuinfo"' EXIT
bash packaging/arm-cpuinfo.sh >"$cpuinfo"
printf '%-8s %-16s %8s %12s %12s %12s %10s\n' model image patches max_score mean_score max_box same_label
for model in "${models[@]}"; do
    for img in models/fixtures/images/*.png models/fixtures/images/*.jpg; do
        json=$(unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$cpuinfo" \
            "$bin" bench --model "$model" --precision bf16 --num-images 1 --image "$img" --json 2>/dev/null)
        python3 -c '
import json, sys
d = json.loads(sys.argv[1])["bf16_drift"]
print("%-8s %-16s %8d %12.3e %12.3e %12.3e %9.1f%%" % (sys.argv[2], sys.argv[3], d["patches"], d["max_score"],
      d["mean_score"], d["max_box_rel"], 100 * d["same_label"]))' "$json" "$(basename "$model")" "$(basename "$img")"
    done
done
