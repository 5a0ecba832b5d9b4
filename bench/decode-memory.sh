#!/usr/bin/env bash
# Peak memory of the daemon for the worst image the default limits allow (a 16-bit RGBA PNG of
# 6324x6324, 311 KB encoded), sent by N clients at once, under a given decode budget.
# Usage: bench/decode-memory.sh [CLIENTS] [DECODE_BUDGET_MB]   (BIN, MODEL_DIR override the defaults)
# Prints the daemon's peak RSS (VmHWM) before and after, and each answer's status and kind.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
clients=${1:-4}
budget=${2:-1024}
bin=${BIN:-$root/target/release/intelligent-video}
model=${MODEL_DIR:-$root/models/fixtures/tiny-a}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 "$root/bench/make_worst_png.py" "$work/worst.png"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
IV_MODEL="$model" IV_SOCKET_PATH="$work/d.sock" IV_HTTP_ADDR="127.0.0.1:$port" IV_CACHE_DIR="$work/cache" \
    IV_WARMUP_ITERATIONS=1 IV_LOG_FORMAT=text IV_DECODE_BUDGET_MB="$budget" IV_MAX_BODY_BYTES=1000000 \
    "$bin" serve 2>"$work/log" &
pid=$!
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
hwm() { awk '/VmHWM/ {print $2}' "/proc/$pid/status"; }
before=$(hwm)
for i in $(seq "$clients"); do
    curl -s --unix-socket "$work/d.sock" -H 'content-type: image/png' --data-binary @"$work/worst.png" \
        'http://localhost/v1/detect?query=a' -o "$work/out$i" -w '%{http_code}\n' >"$work/code$i" &
done
wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
after=$(hwm)
echo "clients=$clients decode_budget_mb=$budget"
for i in $(seq "$clients"); do
    echo "  answer $i: $(cat "$work/code$i") $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("error",{}).get("kind","ok"))' "$work/out$i" 2>/dev/null || echo '?')"
done
echo "peak RSS before: $((before / 1024)) MiB, after: $((after / 1024)) MiB, growth: $(((after - before) / 1024)) MiB"
