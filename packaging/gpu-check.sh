#!/usr/bin/env bash
# The short GPU check for a machine with an NVIDIA GPU (the `device` tool, or any GPU box), run from the
# repository root after `make build`. It checks that GPU discovery reports the card and that `auto` falls
# back cleanly to the CPU when the loaded ONNX Runtime is the CPU build (the bundled one), naming the
# reason. With IV_ONNXRUNTIME_PATH pointing at a GPU build it reports which tier was used instead.
# Prints one JSON object per check; exits non-zero on the first failed check.
set -euo pipefail
bin=${BIN:-target/release/intelligent-video}
model=${MODEL:-models/fixtures/tiny-a}
out=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
pid=
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader || true

# 1. bench picks its backend like the daemon: the skipped tiers and their reasons.
"$bin" bench --model "$model" --num-images 2 --json >"$out/bench.json"
python3 - "$out/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"check": "bench", "backend": r["backend"], "fallbacks": r["fallbacks"]}))
if r["backend"] == "cpu":
    names = [f["backend"] for f in r["fallbacks"]]
    assert names == ["tensorrt", "tensorrt_rtx", "cuda"], names
    for f in r["fallbacks"]:
        assert "libcuda" not in f["reason"], "the GPU was not discovered: " + f["reason"]
PY

# 2. The daemon: GPU facts and fallbacks in /api/optimization, and a detection on the chosen tier.
sock="$out/d.sock"
IV_MODEL="$model" IV_SOCKET_PATH="$sock" IV_HTTP_ADDR=127.0.0.1:0 IV_WARMUP_ITERATIONS=1 \
    IV_CACHE_DIR="$out/cache" IV_LOG_FORMAT=json "$bin" serve 2>"$out/serve.log" &
pid=$!
for _ in $(seq 600); do grep -q '"message":"ready"' "$out/serve.log" 2>/dev/null && break; sleep 0.1; done
curl -sf --unix-socket "$sock" http://x/api/optimization >"$out/opt.json"
python3 - "$out/opt.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
print(json.dumps({"check": "optimization", **o}))
g = o.get("gpu") or {}
assert g.get("available") is True, g
assert g.get("name") and g.get("compute_capability") and g.get("memory_mb", 0) > 0, g
PY
python3 bench/make_test_jpeg.py "$out/frame.jpg" >/dev/null
curl -sf --unix-socket "$sock" -X POST --data-binary @"$out/frame.jpg" -H 'content-type: image/jpeg' \
    "http://x/v1/detect?query=a+person" | python3 -c '
import json,sys; d=json.load(sys.stdin); print(json.dumps({"check": "detect", "detections": len(d["detections"]), "timing_ms": d["timing_ms"]}))'
kill -TERM $pid; wait $pid
echo '{"check": "done", "ok": true}'
