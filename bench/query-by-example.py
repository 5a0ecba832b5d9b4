#!/usr/bin/env python3
"""Cost of an exemplar query against a text query, measured side by side on a running daemon.

Sends, interleaved, N rounds of four POST /v1/detect requests (JSON, same target image):
text query only; the same exemplar every time (an embedding-cache hit after the first); the same
exemplar saved once in a query set (PUT /v1/query-sets/bench, then query_set=bench); an exemplar
whose bytes differ every round (a miss: one extra image-tower pass). Prints the median client-side
latency of each and the ratios to the text query.

Usage: bench/query-by-example.py SOCKET TARGET_IMAGE EXEMPLAR_PNG [N]
"""
import base64
import json
import socket
import statistics
import sys
import time


def post(sock_path, body, method="POST", path="/v1/detect"):
    data = json.dumps(body).encode()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n".encode()
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    status = int(out.split(b" ", 2)[1])
    if status not in (200, 201):
        raise SystemExit(f"status {status}: {out[-300:]!r}")


def main():
    sock, target, exemplar = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    tgt = base64.b64encode(open(target, "rb").read()).decode()
    ex_bytes = open(exemplar, "rb").read()
    ex = base64.b64encode(ex_bytes).decode()
    times = {"text": [], "exemplar_hit": [], "query_set": [], "exemplar_miss": []}
    post(sock, {"image_base64": tgt, "queries": ["a photo of a cat"], "query_images": [{"image_base64": ex}]})
    post(sock, {"query_images": [{"image_base64": ex}]}, "PUT", "/v1/query-sets/bench")
    for i in range(n):
        # Bytes after a PNG's IEND are ignored by decoders but change the content hash: a miss.
        fresh = base64.b64encode(ex_bytes + f"round {i} {time.time()}".encode()).decode()
        for name, body in [
            ("text", {"image_base64": tgt, "queries": ["a photo of a cat"]}),
            ("exemplar_hit", {"image_base64": tgt, "query_images": [{"image_base64": ex}]}),
            ("query_set", {"image_base64": tgt, "query_set": "bench"}),
            ("exemplar_miss", {"image_base64": tgt, "query_images": [{"image_base64": fresh}]}),
        ]:
            t = time.perf_counter()
            post(sock, body)
            times[name].append((time.perf_counter() - t) * 1e3)
    base = statistics.median(times["text"])
    for name, v in times.items():
        m = statistics.median(v)
        print(f"{name:14s} median {m:9.2f} ms  ratio to text {m / base:5.2f}  (n={len(v)})")


if __name__ == "__main__":
    main()
