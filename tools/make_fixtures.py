#!/usr/bin/env python3
"""Writes the PyTorch/PIL golden fixtures that resnet-core's tests compare against.

Run by hand, never by tests or CI (they only read what this writes):

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision safetensors numpy pillow
    cargo build --release -p resnet-cli
    /tmp/torchenv/bin/python tools/make_fixtures.py

It writes into resnet-core/tests/data/:

- preprocess/<image>.png: PIL's 224x224 pixels after torchvision's Resize(256) + CenterCrop(224)
  of Image.open(p).convert("RGB") (EXIF ignored, as torchvision does), for every good test image;
  preprocess/<image>.exif.png: the same after ImageOps.exif_transpose, for images with an EXIF
  orientation.
- golden/golden.json: for a few photos, torchvision resnet18's logits and per-trace-point
  activation summaries (shape, min, max, mean, std, sampled values) on the synthetic weights
  `resnet weights synth --seed 0`, whose SHA-256 is recorded so tests can tell if the generator
  changed.
- golden/cat_baseline.input.npy: torchvision's exact input tensor [1, 3, 224, 224] for one photo.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageOps
from safetensors.torch import load_file
from torchvision import transforms

FORMAT_VERSION = 1
SEED = 0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "testdata", "images")
OUT = os.path.join(ROOT, "resnet-core", "tests", "data")
GOLDEN_IMAGES = ["cat_baseline.jpg", "astronaut_rgb.png", "dogs_lossless.webp"]
TRACE_POINTS = ["stem", "maxpool"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)] + [
    "avgpool",
    "fc",
]
SAMPLES = 16

resize_crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
to_input = transforms.Compose(
    [
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def good_images():
    return sorted(
        f
        for f in os.listdir(IMAGES)
        if os.path.isfile(os.path.join(IMAGES, f)) and not f.endswith(".md")
    )


def write_preprocess_fixtures():
    out = os.path.join(OUT, "preprocess")
    os.makedirs(out, exist_ok=True)
    for name in good_images():
        img = Image.open(os.path.join(IMAGES, name))
        resize_crop(img.convert("RGB")).save(os.path.join(out, name + ".png"))
        if img.getexif().get(0x0112, 1) != 1:
            upright = ImageOps.exif_transpose(img).convert("RGB")
            resize_crop(upright).save(os.path.join(out, name + ".exif.png"))


def synthetic_weights(path):
    binary = os.path.join(ROOT, "target", "release", "resnet")
    if not os.path.exists(binary):
        sys.exit("build the CLI first: cargo build --release -p resnet-cli")
    subprocess.run([binary, "weights", "synth", "--seed", str(SEED), "--out", path], check=True)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def summary(t):
    flat = t.detach().reshape(-1).double()
    idx = np.linspace(0, flat.numel() - 1, SAMPLES).round().astype(np.int64)
    return {
        "shape": list(t.shape),
        "min": flat.min().item(),
        "max": flat.max().item(),
        "mean": flat.mean().item(),
        "std": flat.std(unbiased=False).item(),
        "sample_index": idx.tolist(),
        "sample_value": flat[torch.from_numpy(idx)].tolist(),
    }


def write_golden():
    out = os.path.join(OUT, "golden")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        wpath = os.path.join(tmp, "synth.safetensors")
        digest = synthetic_weights(wpath)
        state = load_file(wpath)
    model = torchvision.models.resnet18()
    model.load_state_dict(state, strict=True)
    model.eval()

    captured = {}
    modules = {"stem": model.relu, "maxpool": model.maxpool, "avgpool": model.avgpool, "fc": model.fc}
    for s in range(1, 5):
        for b in range(2):
            modules[f"layer{s}.{b}"] = getattr(model, f"layer{s}")[b]
    for name, module in modules.items():
        def hook(_m, _inp, output, name=name):
            o = output.detach()
            captured[name] = o.flatten(1) if name == "avgpool" else o
        module.register_forward_hook(hook)

    cases = []
    for name in GOLDEN_IMAGES:
        img = Image.open(os.path.join(IMAGES, name)).convert("RGB")
        x = to_input(resize_crop(img)).unsqueeze(0)
        if name == "cat_baseline.jpg":
            np.save(os.path.join(out, "cat_baseline.input.npy"), x.numpy().astype(np.float32))
        captured.clear()
        with torch.no_grad():
            logits = model(x)
        cases.append(
            {
                "image": name,
                "crop": f"preprocess/{name}.png",
                "logits": logits[0].tolist(),
                "top5": torch.topk(logits[0], 5).indices.tolist(),
                "trace": {p: summary(captured[p]) for p in TRACE_POINTS},
            }
        )
    meta = {
        "format_version": FORMAT_VERSION,
        "generator": "tools/make_fixtures.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "weights": f"resnet weights synth --seed {SEED}",
        "weights_sha256": digest,
        "cases": cases,
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    write_preprocess_fixtures()
    write_golden()
    print("fixtures written to", OUT)
