#!/usr/bin/env python3
"""Reference timings of Hugging Face transformers' OWLv2 on this CPU (for comparison with the Rust port).

Usage:
  python bench/reference_bench.py --preprocess IMAGE [--runs 20] [--model DIR]
  python bench/reference_bench.py --model DIR --iters 5 [--queries "a cat" "a dog"]
  (both may be given). Prints one JSON object on stdout.

--preprocess: Owlv2ImageProcessor (default backend, as Owlv2Processor.from_pretrained gives; size from
  DIR/preprocessor_config.json when --model is given, else 960) on the image: PIL decode done once outside
  the timed loop ("preprocess_ms"), and decode (Image.open + load) + preprocess per run
  ("decode_preprocess_ms"). Medians over --runs.
--model: Owlv2ForObjectDetection forward, batch 1, image at the config's image size (960 for base), text
  queries tokenised once; median over --iters after 1 warmup; torch threads = os.cpu_count().
Peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss (whole process, MiB).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def median_ms(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preprocess", metavar="IMAGE")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--model", metavar="DIR")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--queries", nargs="+", default=["a photo of a cat", "a photo of a dog"])
    ap.add_argument("--no-forward", action="store_true", help="with --model: only use it for preprocessing")
    a = ap.parse_args()
    if not a.preprocess and not a.model:
        ap.error("give --preprocess IMAGE and/or --model DIR")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    res = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    processor = Owlv2Processor.from_pretrained(a.model) if a.model else None

    if a.preprocess:
        ip = processor.image_processor if processor else Owlv2ImageProcessor()
        img = Image.open(a.preprocess)
        img.load()
        ip(images=img, return_tensors="pt")  # warmup
        pre_ms, _ = median_ms(lambda: ip(images=img, return_tensors="pt"), a.runs)

        def decode_and_preprocess():
            im = Image.open(a.preprocess)
            im.load()
            return ip(images=im, return_tensors="pt")

        dec_ms, _ = median_ms(decode_and_preprocess, a.runs)
        dec_only_ms, _ = median_ms(lambda: Image.open(a.preprocess).load(), a.runs)
        res["preprocess"] = {
            "image": a.preprocess, "width": img.width, "height": img.height, "mode": img.mode,
            "image_processor_class": type(ip).__name__, "size": dict(ip.size), "runs": a.runs,
            "preprocess_ms": pre_ms, "decode_preprocess_ms": dec_ms, "decode_ms": dec_only_ms,
        }

    if a.model and not a.no_forward:
        model = Owlv2ForObjectDetection.from_pretrained(a.model).float().eval()
        s = model.config.vision_config.image_size
        text = processor.tokenizer(a.queries, padding="max_length", return_tensors="pt")
        pixel_values = torch.from_numpy(
            np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32))
        with torch.inference_mode():
            fwd = lambda: model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                pixel_values=pixel_values)
            t0 = time.perf_counter()
            fwd()  # warmup
            warm_ms = (time.perf_counter() - t0) * 1e3
            fwd_ms, times = median_ms(fwd, a.iters)
        res["forward"] = {
            "model": a.model, "image_size": s, "batch": 1, "num_queries": len(a.queries),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "warmup_ms": warm_ms, "iters": a.iters, "median_ms": fwd_ms, "all_ms": times,
        }

    res["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
