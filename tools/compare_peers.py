#!/usr/bin/env python3
"""Times resnet18-rs against ONNX Runtime, OpenVINO and (if installed) PyTorch on the same
machine, weights and threads, interleaved, and prints one table with the CPU model.

Optional, never run by CI. Needs: pip install onnx onnxruntime openvino nncf safetensors numpy
(PyTorch is optional: without it the ONNX graph is built from the safetensors file directly and
the PyTorch rows are left out). Usage (after `cargo build --release -p resnet-cli`):

    python3 tools/compare_peers.py [--threads 2] [--iters 20] [--rounds 3] [--batch 1,8]
        [--int8] [--bf16] [--isa vnni,amx] [--plan off,auto] [--winograd auto]

RESNET_BIN=path/to/resnet picks another build of the binary.

Interleaving: each round times every engine once (ONNX Runtime fp32, OpenVINO f32 with
INFERENCE_PRECISION_HINT=f32, OpenVINO at its default precision, the int8 variants with --int8,
resnet native, int8 and bf16 with each --plan) for --iters runs each; the figure per engine is the median over
rounds of the per-round medians, and the ratios are taken against ONNX Runtime fp32. All engines
run the same synthetic weights (`resnet weights synth --seed 0`) and the same thread count.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("RESNET_BIN", os.path.join(ROOT, "target", "release", "resnet"))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ms(fn, iters):
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def resnet18_onnx(weights, path):
    """torchvision's ResNet-18 as an ONNX graph, straight from the state dict (Conv +
    BatchNormalization + Relu + MaxPool + Add + GlobalAveragePool + Gemm), opset 17."""
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def conv_bn(x, conv, bn, stride, pad, out, relu):
        w = init(conv + ".weight", weights[conv + ".weight"])
        nodes.append(helper.make_node("Conv", [x, w], [out + "_c"], strides=[stride, stride],
                                      pads=[pad] * 4))
        args = [init(f"{bn}.{k}", weights[f"{bn}.{k}"]) for k in
                ("weight", "bias", "running_mean", "running_var")]
        nodes.append(helper.make_node("BatchNormalization", [out + "_c"] + args,
                                      [out + ("_b" if relu else "")], epsilon=1e-5))
        if relu:
            nodes.append(helper.make_node("Relu", [out + "_b"], [out]))
        return out

    x = conv_bn("x", "conv1", "bn1", 2, 3, "stem", True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x = "pool"
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            h = conv_bn(x, p + ".conv1", p + ".bn1", stride, 1, p + "_1", True)
            h = conv_bn(h, p + ".conv2", p + ".bn2", 1, 1, p + "_2", False)
            skip = x
            if p + ".downsample.0.weight" in weights:
                skip = conv_bn(x, p + ".downsample.0", p + ".downsample.1", stride, 0, p + "_d",
                               False)
            nodes.append(helper.make_node("Add", [h, skip], [p + "_sum"]))
            nodes.append(helper.make_node("Relu", [p + "_sum"], [p]))
            x = p
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", init("fc.weight", weights["fc.weight"]),
                                           init("fc.bias", weights["fc.bias"])], ["y"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def calibration_inputs(tmp):
    """The repository's photos preprocessed by `resnet preprocess` (torchvision's transforms)."""
    images = os.path.join(ROOT, "testdata", "images")
    out = []
    for name in sorted(os.listdir(images)):
        path = os.path.join(images, name)
        if not os.path.isfile(path) or name.endswith(".md"):
            continue
        npy = os.path.join(tmp, name + ".npy")
        r = subprocess.run([BINARY, "preprocess", path, "--out", npy], capture_output=True)
        if r.returncode == 0:
            out.append(np.load(npy).astype(np.float32).reshape(1, 3, 224, 224))
    return out


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20, help="timed runs per engine per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (A B A B ...)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--winograd", default="auto", help="native Winograd policy")
    ap.add_argument("--plan", default="off,auto", help="native, int8 and bf16 --plan choices to time")
    ap.add_argument("--bf16", action="store_true",
                    help="also time resnet's bf16 backend (OpenVINO's default row is bf16 on AMX CPUs)")
    ap.add_argument("--isa", default="",
                    help="comma-separated ISA levels to time resnet's int8/bf16 rows at "
                         "(e.g. vnni,amx; default: the best this CPU has)")
    ap.add_argument("--int8", action="store_true",
                    help="also ORT QDQ int8, OpenVINO+NNCF int8 and `resnet quantize` + int8")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))

    with tempfile.TemporaryDirectory() as tmp:
        wfile = os.path.join(tmp, "synth.safetensors")
        subprocess.run([BINARY, "weights", "synth", "--seed", "0", "--out", wfile], check=True,
                       stderr=subprocess.DEVNULL)
        weights = load_file(wfile)
        onnx_path = os.path.join(tmp, "resnet18.onnx")
        resnet18_onnx(weights, onnx_path)
        engines = {}  # name -> fn(x) running one batch
        session = ort_session(onnx_path, args.threads)
        engines["onnxruntime fp32"] = lambda x: session.run(None, {"x": x})
        versions = [f"onnxruntime {ort.__version__}"]
        try:
            import openvino as ov
            core = ov.Core()
            versions.append(f"openvino {ov.__version__}")
            base = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
            ov_f32 = core.compile_model(onnx_path, "CPU",
                                        dict(base, INFERENCE_PRECISION_HINT="f32"))
            ov_def = core.compile_model(onnx_path, "CPU", base)
            prec = ov_def.get_property("INFERENCE_PRECISION_HINT")
            engines["openvino f32"] = lambda x, m=ov_f32: m(x)
            engines[f"openvino default ({prec})"] = lambda x, m=ov_def: m(x)
        except ImportError:
            ov = None
        calib = calibration_inputs(tmp) if args.int8 else []
        if args.int8:
            from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                                  quantize_static)

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(calib)

                def get_next(self):
                    x = next(self.it, None)
                    return None if x is None else {"x": x}

            q_path = os.path.join(tmp, "resnet18.int8.onnx")
            quantize_static(onnx_path, q_path, Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            q_session = ort_session(q_path, args.threads)
            engines["onnxruntime int8 QDQ"] = lambda x: q_session.run(None, {"x": x})
            if ov is not None:
                import nncf
                versions.append(f"nncf {nncf.__version__}")
                q_model = nncf.quantize(core.read_model(onnx_path), nncf.Dataset(calib),
                                        subset_size=len(calib))
                ov_q = core.compile_model(q_model, "CPU", base)
                engines["openvino+nncf int8"] = lambda x, m=ov_q: m(x)
            q_file = os.path.join(tmp, "synth.int8.safetensors")
            subprocess.run([BINARY, "quantize", "-q", "--weights", wfile, "--calib",
                            os.path.join(ROOT, "testdata", "images"), "--out", q_file], check=True)
        try:
            import torch
            torch.set_num_threads(args.threads)
            import torchvision
            from safetensors.torch import load_file as load_torch
            model = torchvision.models.resnet18()
            model.load_state_dict(load_torch(wfile))
            model.eval()
            versions.append(f"torch {torch.__version__}")

            def run_torch(x):
                with torch.no_grad():
                    model(torch.from_numpy(x))
            engines["pytorch eager"] = run_torch
        except ImportError:
            pass

        def resnet_rows(backend, weights_file, extra):
            cmd = [BINARY, "--threads", str(args.threads), "bench", "--weights", weights_file,
                   "--backend", backend, "--batch", args.batch, "--iters", str(args.iters),
                   "--format", "json"] + extra
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            return json.loads(out.stdout)["rows"]

        results = {}  # (engine, batch) -> [per-round medians]
        described = {}
        loads = []
        for r in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for b in batches:
                x = np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)
                for name, fn in engines.items():
                    results.setdefault((name, b), []).append(
                        median_ms(lambda: fn(x), args.iters))
            rows = resnet_rows("native", wfile, ["--winograd", args.winograd, "--plan", args.plan])
            isas = [i for i in args.isa.split(",") if i] or [None]
            for isa in isas:
                extra = ["--isa", isa] if isa else []
                tag = f" @{isa}" if isa else ""
                if args.int8:
                    rows += [dict(r, backend=r["backend"] + tag)
                             for r in resnet_rows("int8", q_file, extra + ["--plan", args.plan])]
                if args.bf16:
                    rows += [dict(r, backend=r["backend"] + tag)
                             for r in resnet_rows("bf16", wfile, extra + ["--plan", args.plan])]
            for row in rows:
                name = "resnet " + row["backend"]
                if name in ("resnet native", "resnet int8", "resnet bf16") and "," not in args.plan:
                    name += f"/plan-{args.plan}"
                results.setdefault((name, row["batch"]), []).append(row["median_ms"])
                described[(name, row["batch"])] = row["kernel"]

    print(f"CPU: {cpu_model()}; {args.threads} threads; {args.rounds} interleaved rounds of "
          f"{args.iters} runs per engine; load average per round {', '.join(f'{l:.2f}' for l in loads)}")
    print("; ".join(versions))
    print()
    print(f"| engine | batch | median ms | images/s | x ORT fp32 latency | rounds (ms) |")
    print("|---|---|---|---|---|---|")
    for b in batches:
        base = statistics.median(results[("onnxruntime fp32", b)])
        entries = [(statistics.median(v), name, v) for (name, bb), v in results.items() if bb == b]
        for ms, name, v in sorted(entries):
            print(f"| {name} | {b} | {ms:.2f} | {b / ms * 1e3:.1f} | {ms / base:.2f} | "
                  f"{' '.join(f'{t:.2f}' for t in v)} |")
    print()
    for (name, b), d in sorted(described.items()):
        print(f"{name} (batch {b}): {d}")


if __name__ == "__main__":
    main()
