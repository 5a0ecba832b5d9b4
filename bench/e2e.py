#!/usr/bin/env python3
"""End to end, side by side: the daemon over its Unix socket against transformers in-process, interleaved.

Usage: bench/e2e.py MODEL_DIR IMAGE [--rounds 3] [--precision fp32 int8 openvino:fp32 openvino:bf16] [--bin PATH]
  (python with torch and transformers; the daemon binary defaults to target/release/intelligent-video;
  `openvino:P` is a daemon with optimization_backend = "openvino" and openvino_precision = P, its
  runtime from IV_OPENVINO_PATH: each daemon has its own state folder)

Per round, in this order: transformers end to end (PIL decode, Owlv2Processor with the text queries,
forward, post_process_object_detection), then for each --precision the daemon end to end (POST of the
image bytes with the queries: decode, preprocessing, inference, post-processing; the text embeddings
are cached by the daemon after its first request, as in service). Each daemon runs with its own cache and
no warmup; one untimed request per side first. Prints one JSON line per round with each side's
wall time and its ratio to transformers (and, when fp32 is measured, each other side's ratio to our
fp32), then a summary with the host's CPU model and SIMD flags.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUERIES = ["a person", "a forklift", "a red car"]
SIMD = ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
        "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16"]


def cpu():
    model, flags = None, []
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            k = k.strip()
            if model is None and k in ("model name", "CPU part"):
                model = v.strip()
            if not flags and k in ("flags", "Features"):
                have = set(v.split())
                flags = [x for x in SIMD if x in have]
    return model, flags


def post(sock_path, image, timeout=600):
    q = "&".join("query=" + urllib.parse.quote(x) for x in QUERIES)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(f"POST /v1/detect?{q}&threshold=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              f"Content-Type: image/jpeg\r\nContent-Length: {len(image)}\r\n\r\n".encode() + image)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    status = int(out.split(b" ", 2)[1])
    if status != 200:
        raise SystemExit(f"daemon answered {status}: {out[-300:]!r}")
    return json.loads(out.split(b"\r\n\r\n", 1)[1])


def start_daemon(binary, model, side, work):
    name = side.replace(":", "-")
    sock = os.path.join(work, f"{name}.sock")
    env = dict(os.environ, IV_MODEL=model, IV_SOCKET_PATH=sock, IV_HTTP_ADDR="127.0.0.1:0",
               IV_WARMUP_ITERATIONS="0", IV_LOG_LEVEL="warn",
               IV_CACHE_DIR=os.path.join(work, f"cache-{name}"),
               IV_STATE_DIR=os.path.join(work, f"state-{name}"), IV_REQUEST_TIMEOUT_MS="600000")
    if side.startswith("openvino:"):
        if "IV_OPENVINO_PATH" not in os.environ:
            raise SystemExit("openvino sides need IV_OPENVINO_PATH (an installed OpenVINO runtime's folder)")
        env.update(IV_OPTIMIZATION_BACKEND="openvino", IV_OPENVINO_PRECISION=side.split(":", 1)[1])
    else:
        env.update(IV_OPTIMIZATION_BACKEND="cpu", IV_CPU_PRECISION=side)
    precision = name
    p = subprocess.Popen([binary, "serve"], env=env, stderr=open(os.path.join(work, f"{precision}.log"), "w"))
    for _ in range(1200):
        if p.poll() is not None:
            raise SystemExit(f"the {precision} daemon exited; see {work}/{precision}.log")
        if os.path.exists(sock):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(4096):
                    s.close()
                    return p, sock
                s.close()
            except OSError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"the {precision} daemon never got ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--bin", default=os.path.join(root, "target/release/intelligent-video"))
    a = ap.parse_args()

    import torch
    import transformers
    from PIL import Image
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    torch.set_num_threads(os.cpu_count() or 1)
    processor = Owlv2Processor.from_pretrained(a.model)
    model = Owlv2ForObjectDetection.from_pretrained(a.model).float().eval()
    image = open(a.image, "rb").read()

    def transformers_e2e():
        im = Image.open(a.image)
        im = im.convert("RGB")
        inputs = processor(text=[QUERIES], images=im, return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs)
        return processor.image_processor.post_process_object_detection(
            out, threshold=0.1, target_sizes=torch.tensor([[im.height, im.width]]))

    work = tempfile.mkdtemp(prefix="iv-e2e-")
    daemons = {p: start_daemon(a.bin, a.model, p, work) for p in a.precision}
    try:
        transformers_e2e()
        for _, sock in daemons.values():
            post(sock, image)
        rows = []
        for r in range(1, a.rounds + 1):
            row = {"round": r}
            t = time.perf_counter()
            transformers_e2e()
            row["transformers_s"] = time.perf_counter() - t
            for p, (_, sock) in daemons.items():
                t = time.perf_counter()
                post(sock, image)
                row[f"ours_{p}_s"] = time.perf_counter() - t
                row[f"ratio_{p}"] = row[f"ours_{p}_s"] / row["transformers_s"]
            if "fp32" in daemons:
                for p in daemons:
                    if p != "fp32":
                        row[f"{p}_to_fp32"] = row[f"ours_{p}_s"] / row["ours_fp32_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
        model_name, flags = cpu()
        print(json.dumps({
            "summary": {p: [round(x[f"ratio_{p}"], 3) for x in rows] for p in a.precision},
            "to_our_fp32": {p: [round(x[f"{p}_to_fp32"], 3) for x in rows]
                            for p in a.precision if p != "fp32" and "fp32" in daemons},
            "cpu": model_name, "cpu_flags": flags, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "torch": torch.__version__, "queries": QUERIES, "image": a.image,
        }))
    finally:
        for p, _ in daemons.values():
            p.terminate()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
