#!/usr/bin/env bash
# Side-by-side measurements on this machine (interleaved, one run): our image side vs transformers,
# and the daemon's per-request overhead. Usage: bench/compare.sh MODEL_DIR [ROUNDS] > results.jsonl
# MODEL_DIR: a full-size checkpoint, e.g. from models/fixtures/make_base_random.py.
set -euo pipefail
model=${1:?model dir}
rounds=${2:-2}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) # repository root, wherever this is run from
bin=${BIN:-$root/target/release/intelligent-video}
out=$(mktemp -d)
python3 "$root/bench/make_test_jpeg.py" "$out/frame.jpg" >/dev/null
for r in $(seq "$rounds"); do
    echo "{\"round\": $r, \"ours\": $("$bin" bench --model "$model" --num-images 3 --image "$out/frame.jpg" --json ${COMPARE:+--compare})}"
    echo "{\"round\": $r, \"transformers\": $(python3 "$root/bench/reference_bench.py" --model "$model" --iters 3 --preprocess "$out/frame.jpg" --runs 10)}"
done
# Daemon overhead per request: total - inference, from the daemon's own timing_ms.
sock="$out/d.sock"
IV_MODEL="$model" IV_SOCKET_PATH="$sock" IV_HTTP_ADDR=127.0.0.1:0 IV_WARMUP_ITERATIONS=1 IV_LOG_LEVEL=warn \
    "$bin" serve 2>"$out/serve.log" &
pid=$!
for _ in $(seq 600); do
    [ -S "$sock" ] && curl -sf --unix-socket "$sock" -o /dev/null -X POST --data-binary @"$out/frame.jpg" \
        -H 'content-type: image/jpeg' "http://x/v1/detect?query=a+person" && break
    sleep 1
done
for i in 1 2 3 4 5; do
    curl -s --unix-socket "$sock" -X POST --data-binary @"$out/frame.jpg" -H 'content-type: image/jpeg' \
        "http://x/v1/detect?query=a+person&query=a+forklift" | python3 -c '
import json,sys; d=json.load(sys.stdin); t=d["timing_ms"]
print(json.dumps({"daemon_request": '"$i"', **t, "overhead_ms": t["total"]-t["inference"]}))'
done
kill -TERM $pid; wait $pid || true
rm -rf "$out"
