#!/usr/bin/env python3
"""Times resnet18-rs against ONNX Runtime and PyTorch on the same machine, weights and threads.

Optional, never run by CI. Needs: pip install torch torchvision onnx onnxruntime safetensors
Usage (after `cargo build --release -p resnet-cli`):

    python3 tools/compare_peers.py [--threads 2] [--iters 30] [--batch 1,8] [--winograd off,auto,all] [--int8]

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
    ap.add_argument("--int8", action="store_true",
                    help="also time ONNX Runtime's static INT8 (QDQ, per-channel) model against "
                         "`resnet quantize` + --backend int8, both calibrated on testdata/images")
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
        if args.int8:
            q_session, q_file = int8_models(args, tmp, onnx_path, weights)
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
            rows[("onnxruntime", b)] = median_ms(lambda: session.run(None, {"x": x}), args.iters)
            if args.int8:
                rows[("onnxruntime int8 QDQ", b)] = median_ms(
                    lambda: q_session.run(None, {"x": x}), args.iters)
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
        if args.int8:
            out = subprocess.run(
                [BINARY, "--threads", str(args.threads), "bench", "--weights", q_file, "--backend",
                 "int8", "--batch", args.batch, "--iters", str(args.iters), "--format", "json"],
                check=True, capture_output=True, text=True)
            for r in json.loads(out.stdout)["rows"]:
                rows[("resnet18-rs int8", r["batch"])] = r["median_ms"]

    print(f"threads {args.threads}, {args.iters} timed runs each, median ms per batch; "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    for b in batches:
        base = rows[("onnxruntime", b)]
        print(f"\nbatch {b}:")
        for (name, bb), ms in sorted(rows.items(), key=lambda kv: kv[1]):
            if bb == b:
                print(f"  {name:<26} {ms:8.2f} ms  {b / ms * 1e3:7.1f} images/s  {ms / base:5.2f}x onnxruntime")


def int8_models(args, tmp, onnx_path, weights):
    """ORT's static QDQ model (per-channel s8 weights, u8 activations, MinMax calibration) and
    `resnet quantize`'s model, both calibrated on the repo's photos with torchvision's transforms."""
    from PIL import Image
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from torchvision import transforms

    images = os.path.join(ROOT, "testdata", "images")
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    batch = []
    for name in sorted(os.listdir(images)):
        path = os.path.join(images, name)
        if os.path.isfile(path) and not name.endswith(".md"):
            batch.append(tf(Image.open(path).convert("RGB")).unsqueeze(0).numpy())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batch)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    q_path = os.path.join(tmp, "resnet18.int8.onnx")
    quantize_static(onnx_path, q_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    q_session = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])
    q_file = os.path.join(tmp, "synth.int8.safetensors")
    subprocess.run([BINARY, "quantize", "-q", "--weights", weights, "--calib", images, "--out", q_file],
                   check=True)
    return q_session, q_file


if __name__ == "__main__":
    main()
