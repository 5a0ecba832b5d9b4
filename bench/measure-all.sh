#!/usr/bin/env bash
# Every number of the README's performance section, measured side by side on this machine in one
# run. Usage: bench/measure-all.sh MODEL_DIR (a full-size checkpoint, e.g. from
# models/fixtures/make_base_random.py). Prints JSON lines.
set -euo pipefail
model=${1:?model dir}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) # repository root, wherever this is run from
bin=${BIN:-$root/target/release/intelligent-video}
out=$(mktemp -d)
python3 "$root/bench/make_test_jpeg.py" "$out/frame.jpg" >/dev/null
# 1. Image side: ours fp32, ours int8, transformers (forward + preprocessing + peak RSS), interleaved.
for r in 1 2; do
    echo "{\"round\": $r, \"ours_fp32\": $("$bin" bench --model "$model" --num-images 3 --image "$out/frame.jpg" --json)}"
    echo "{\"round\": $r, \"ours_int8\": $("$bin" bench --model "$model" --num-images 3 --image "$out/frame.jpg" --precision int8 --json)}"
    echo "{\"round\": $r, \"transformers\": $(python3 "$root/bench/reference_bench.py" --model "$model" --iters 3 --preprocess "$out/frame.jpg" --runs 10 2>/dev/null | tr -d '\n')}"
done
# 2. int8 drift against fp32 on the same frame, every patch (bench --precision int8 reports it).
echo "{\"int8_drift\": $("$bin" bench --model "$model" --num-images 1 --image "$out/frame.jpg" --precision int8 --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["int8_drift"]))')}"
# 3. Boot to READY: cold (fresh cache) then warm (the cached artifact), one pair with 1 warmup inference and
#    three pairs with none. ready_s: wall time from exec to the "ready" log line; startup_ms: the daemon's
#    own count (load + warmup). Then the daemon's per-request overhead (total - inference) from its timing_ms.
sock="$out/d.sock"
boot() { # NAME WARMUP [requests]
    local start ready pid
    start=$(date +%s.%N)
    IV_MODEL="$model" IV_SOCKET_PATH="$sock" IV_HTTP_ADDR=127.0.0.1:0 IV_WARMUP_ITERATIONS=$2 \
        IV_CACHE_DIR="$out/cache" IV_LOG_FORMAT=json IV_LOG_LEVEL=info "$bin" serve 2>"$out/$1.log" &
    pid=$!
    until grep -q '"message":"ready"' "$out/$1.log" 2>/dev/null; do sleep 0.01; done
    ready=$(date +%s.%N)
    local ms
    ms=$(grep '"message":"ready"' "$out/$1.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fields"]["startup_ms"])')
    echo "{\"boot\": \"$1\", \"warmup\": $2, \"ready_s\": $(echo "$ready - $start" | bc), \"startup_ms\": $ms}"
    if [ -n "${3:-}" ]; then
        for i in 1 2 3; do
            curl -s --unix-socket "$sock" -X POST --data-binary @"$out/frame.jpg" -H 'content-type: image/jpeg' \
                "http://x/v1/detect?query=a+person&query=a+forklift" | python3 -c '
import json,sys; d=json.load(sys.stdin); t=d["timing_ms"]
print(json.dumps({"daemon_request": '"$i"', **t, "overhead_ms": t["total"]-t["inference"]}))'
        done
    fi
    kill -TERM $pid; wait $pid || true
}
rm -rf "$out/cache"; boot cold 1; boot warm 1
for r in 1 2 3; do rm -rf "$out/cache"; boot cold0 0; boot warm0 0; done
boot warm0 0 requests
rm -rf "$out"
