#!/usr/bin/env python3
"""The PyTorch-eager reference of hemexp's segmentation network, for scripts/bench.sh: the same
weights (the model file), the same windows (the model-grid input that bench_segmenter --dump
wrote), the same sliding window (scripts/train_segmenter.py, as src/core/sliding_window.cpp),
`torch.inference_mode`, the chunked selective scan of scripts/hemexp_nets.py. Prints one JSON
line: median seconds per thread count, the C++ seconds from the dump, their ratio, and the
largest difference between the two probability maps.

    /usr/bin/python3 scripts/bench_reference.py --model M --windows DIR/windows.safetensors \
        [--threads 1,2] [--repeats 3]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402
from train_segmenter import sliding_window_probabilities  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--windows", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    weights, meta = hemexp_safetensors.load(args.model)
    card = json.loads(meta["hemexp_model_card"])
    net = hemexp_nets.UMamba(card["network"])
    net.load_state_dict(weights)
    net.eval()
    hemexp_nets.use_scan(net, hemexp_nets.selective_scan_chunked)
    dump, dmeta = hemexp_safetensors.load(args.windows)
    image = dump["input"]
    inference = card["inference"]
    patch, overlap = inference["patch_size"], inference.get("overlap", 0.5)
    if inference.get("mirror", False):
        sys.exit("bench_reference.py: the card mirrors windows (inference.mirror); this reference does not")
    pad_value = float(dmeta["pad_value"])
    classes = card["network"]["num_classes"]
    out = {"windows": int(dmeta["windows"]), "input_shape": list(image.shape), "pytorch": torch.__version__}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        times, probabilities = [], None
        with torch.inference_mode():
            for k in range(args.repeats + 1):  # the first is a warm-up
                start = time.perf_counter()
                probabilities = sliding_window_probabilities(net, image, patch, overlap, pad_value, classes)
                if k:
                    times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        cpp = float(dmeta[f"cpp_seconds_threads_{threads}"]) if f"cpp_seconds_threads_{threads}" in dmeta else None
        out[f"threads_{threads}"] = {
            "pytorch_seconds": seconds,
            "cpp_seconds": cpp,
            "pytorch_over_cpp": seconds / cpp if cpp else None,
            "max_abs_probability_difference": float((probabilities - dump["probabilities"]).abs().max()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
