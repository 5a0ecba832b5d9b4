#!/usr/bin/env bash
# Video stream ingestion, measured side by side on this machine in one run (prints JSON lines):
#   1. ffmpeg decoding a 1080p30 H.264 clip to RGB (`ffmpeg -benchmark`, 3 rounds): CPU and wall
#      time per frame — the floor for any decoder-based ingestion;
#   2. the daemon processing the same clip as 1 and then 4 file streams at once (every frame, in
#      order): frames/s, CPU per frame, the part of it that is inference (the model is tiny so that
#      inference is not the bottleneck) and the mean time from a decoded frame to its published
#      event (iv_stream_end_to_end_latency_seconds);
#   3. with --soak SECONDS: one live RTSP stream (tests/it/support/rtsp_server.py) for that long,
#      the daemon's RSS sampled every 10 s.
# Usage: bench/stream-ingest.sh [--seconds N] [--soak SECONDS]   (BIN, MODEL override the binary
# and the model; default: target/release/intelligent-video and the tiny-a fixture).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN:-$root/target/release/intelligent-video}
model=${MODEL:-$root/models/fixtures/tiny-a}
secs=10
soak=0
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) secs=$2; shift 2 ;;
    --soak) soak=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
frames=$((secs * 30))
ffmpeg -loglevel error -f lavfi -i "testsrc2=size=1920x1080:rate=30" -t "$secs" \
    -c:v libx264 -preset veryfast -g 60 -pix_fmt yuv420p "$out/clip.mp4"
echo "{\"host_cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc), \"avx512f\": $(grep -qw avx512f /proc/cpuinfo && echo true || echo false), \"frames\": $frames}"

for r in 1 2 3; do
    t=$( { /usr/bin/time -f '%e %U %S' ffmpeg -loglevel error -benchmark -i "$out/clip.mp4" \
        -f rawvideo -pix_fmt rgb24 -y /dev/null >/dev/null; } 2>&1 | tail -n 1)
    read -r wall user sys <<<"$t"
    echo "{\"ffmpeg_round\": $r, \"wall_s\": $wall, \"cpu_s\": $(echo "$user + $sys" | bc), \"cpu_ms_per_frame\": $(echo "scale=3; ($user + $sys) * 1000 / $frames" | bc)}"
done

sock="$out/d.sock"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
IV_MODEL="$model" IV_SOCKET_PATH="$sock" IV_HTTP_ADDR="127.0.0.1:$port" IV_WARMUP_ITERATIONS=1 \
    IV_CACHE_DIR="$out/cache" IV_STATE_DIR="$out/state" IV_LOG_LEVEL=warn IV_MAX_BATCH_SIZE=4 \
    "$bin" serve 2>"$out/serve.log" &
pid=$!
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$out/serve.log" >&2; exit 1; }
    sleep 0.1
done
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{print ($14 + $15) / t}' "/proc/$pid/stat"; }
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'; }
api() { curl -s --unix-socket "$sock" "$@"; }

for n in 1 4; do
    c0=$(cpu); i0=$(metric iv_inference_latency_seconds_sum)
    e0=$(metric iv_stream_end_to_end_latency_seconds_sum); k0=$(metric iv_stream_end_to_end_latency_seconds_count)
    t0=$(date +%s.%N)
    for s in $(seq 1 "$n"); do
        api -X PUT -H 'content-type: application/json' "http://x/v1/streams/s$s" \
            -d "{\"url\": \"$out/clip.mp4\", \"queries\": [\"a person\", \"a car\"]}" >/dev/null
    done
    until api http://x/v1/streams | python3 -c '
import json, sys
s = json.load(sys.stdin)["streams"]
sys.exit(0 if s and all(x["state"] in ("finished", "failed") for x in s) else 1)'; do sleep 0.05; done
    t1=$(date +%s.%N); c1=$(cpu); i1=$(metric iv_inference_latency_seconds_sum)
    e1=$(metric iv_stream_end_to_end_latency_seconds_sum); k1=$(metric iv_stream_end_to_end_latency_seconds_count)
    status=$(api http://x/v1/streams)
    python3 - "$n" "$frames" "$t0" "$t1" "$c0" "$c1" "$i0" "$i1" "$e0" "$e1" "$k0" "$k1" "$status" <<'EOF'
import json, sys
n, frames = int(sys.argv[1]), int(sys.argv[2])
t0, t1, c0, c1, i0, i1, e0, e1, k0, k1 = map(float, sys.argv[3:13])
streams = json.loads(sys.argv[13])["streams"]
done = sum(s["frames"] for s in streams)
print(json.dumps({
    "daemon_streams": n, "frames_processed": done, "expected": n * frames,
    "states": sorted({s["state"] for s in streams}), "decoder": streams[0]["decoder"],
    "wall_s": round(t1 - t0, 3), "frames_per_s": round(done / (t1 - t0), 1),
    "cpu_ms_per_frame": round((c1 - c0) * 1000 / done, 3),
    "inference_wall_ms_per_frame": round((i1 - i0) * 1000 / done, 3),
    "end_to_end_mean_ms": round((e1 - e0) * 1000 / max(k1 - k0, 1), 2),
}))
EOF
    for s in $(seq 1 "$n"); do api -X DELETE "http://x/v1/streams/s$s" >/dev/null; done
done

if [ "$soak" -gt 0 ]; then
    rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    /usr/bin/python3 "$root/tests/it/support/rtsp_server.py" "$rport" >"$out/rtsp.log" 2>&1 &
    until grep -q ready "$out/rtsp.log"; do sleep 0.1; done
    api -X PUT -H 'content-type: application/json' http://x/v1/streams/live \
        -d "{\"url\": \"rtsp://127.0.0.1:$rport/cam\", \"queries\": [\"a ball\"]}" >/dev/null
    for ((t = 0; t <= soak; t += 10)); do
        echo "{\"soak_s\": $t, \"rss_kib\": $(awk '/VmRSS/ {print $2}' "/proc/$pid/status"), \"frames\": $(api http://x/v1/streams/live | python3 -c 'import json,sys; print(json.load(sys.stdin)["frames"])')}"
        sleep 10
    done
fi
kill -TERM "$pid"
wait "$pid"
echo "{\"daemon_exit\": $?}"
