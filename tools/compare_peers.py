#!/usr/bin/env python3
"""Times resnet18-rs against ONNX Runtime and PyTorch on the same machine, weights and threads.

Optional, never run by CI. Needs: pip install torch torchvision onnx onnxruntime safetensors
Usage (after `cargo build --release -p resnet-cli`):

    python3 tools/compare_peers.py [--threads 2] [--iters 30] [--batch 1,8] [--winograd off,auto,all]

RESNET_BIN=path/to/resnet picks another build of the binary.

All engines run the same synthetic weights (`resnet weights synth --seed 0`), one after the other
in this one process tree, each with the same thread count; medians are compared as ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("RESNET_BIN", os.path.join(ROOT, "target", "release", "resnet"))


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--winograd", default="off,auto,all", help="native Winograd policies to time")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "synth.safetensors")
        subprocess.run([BINARY, "weights", "synth", "--seed", "0", "--out", weights], check=True,
                       stderr=subprocess.DEVNULL)
        model = torchvision.models.resnet18()
        model.load_state_dict(load_file(weights))
        model.eval()
        onnx_path = os.path.join(tmp, "resnet18.onnx")
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), onnx_path, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

        rows = {}
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
            rows[("onnxruntime", b)] = median_ms(lambda: session.run(None, {"x": x}), args.iters)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                rows[("pytorch eager", b)] = median_ms(lambda: model(xt), args.iters)
                model_cl = model.to(memory_format=torch.channels_last)
                xcl = xt.to(memory_format=torch.channels_last)
                rows[("pytorch channels_last", b)] = median_ms(lambda: model_cl(xcl), args.iters)
                model.to(memory_format=torch.contiguous_format)

        out = subprocess.run(
            [BINARY, "--threads", str(args.threads), "bench", "--weights", weights, "--backend", "gemm,native",
             "--winograd", args.winograd, "--batch", args.batch, "--iters", str(args.iters), "--format", "json"],
            check=True, capture_output=True, text=True)
        report = json.loads(out.stdout)
        for r in report["rows"]:
            rows[("resnet18-rs " + r["backend"], r["batch"])] = r["median_ms"]

    print(f"threads {args.threads}, {args.iters} timed runs each, median ms per batch; "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    for b in batches:
        base = rows[("onnxruntime", b)]
        print(f"\nbatch {b}:")
        for (name, bb), ms in sorted(rows.items(), key=lambda kv: kv[1]):
            if bb == b:
                print(f"  {name:<26} {ms:8.2f} ms  {b / ms * 1e3:7.1f} images/s  {ms / base:5.2f}x onnxruntime")


if __name__ == "__main__":
    main()
