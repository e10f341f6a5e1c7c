#!/usr/bin/env python3
"""Writes the tiny `.pth` fixtures that resnet-core's `.pth` reader is tested on.

Run by hand, never by tests or CI (they only read what this writes; the files are a few KB):

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python tools/make_pth_fixtures.py

With `--full SYNTH.safetensors OUT.pth` it instead writes a full-size torchvision ResNet-18
checkpoint (46 MB, kept out of git) from weights made by `resnet weights synth`, via
`resnet18().load_state_dict(...)` and `torch.save(model.state_dict())`: the README's check that a
real PyTorch checkpoint classifies exactly as its safetensors twin.

Writes into resnet-core/tests/data/pth/, each file saved by real `torch.save`:

- dtypes.pth: an OrderedDict of f32, f16, bf16 and i64 tensors (0-d, 1-d, 2-d, 4-d).
- views.pth: tensors sharing one storage: the whole, a slice at a non-zero storage offset, a
  reshaped view, and a transposed (non-contiguous) view.
- legacy.pth: the pre-1.6 (non-zip) format, which the reader refuses with a message.
- malicious.pth: a pickle whose GLOBAL is `os.system` (never executed by the reader, which must
  refuse it by name).
- expected.json: every tensor of dtypes.pth and views.pth as dtype, shape and flat values
  (row-major, as float), so tests compare against what PyTorch itself reads back.
"""
import collections
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "resnet-core", "tests", "data", "pth")


class Exploit:
    """Pickles to `os.system("echo pwned")`: a stand-in for a hostile checkpoint."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def describe(sd):
    out = {}
    for k, t in sd.items():
        out[k] = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "values": [float(v) for v in t.detach().to(torch.float64).reshape(-1).tolist()],
        }
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    dtypes = collections.OrderedDict()
    dtypes["conv.weight"] = torch.randn(2, 3, 1, 2, generator=g)
    dtypes["bn.running_var"] = torch.rand(3, generator=g).half()
    dtypes["fc.weight"] = torch.randn(2, 3, generator=g).bfloat16()
    dtypes["bn.num_batches_tracked"] = torch.tensor(12345678901, dtype=torch.int64)
    dtypes["fc.bias"] = torch.tensor([1.5, -2.25], dtype=torch.float32)
    torch.save(dtypes, os.path.join(OUT, "dtypes.pth"))

    base = torch.arange(12, dtype=torch.float32) * 0.5 - 1.0
    views = collections.OrderedDict()
    views["whole"] = base
    views["tail"] = base[5:]  # storage offset 5
    views["matrix"] = base[:6].view(2, 3)
    views["transposed"] = base[:6].view(2, 3).t()  # strides (1, 3)
    torch.save(views, os.path.join(OUT, "views.pth"))

    torch.save(dtypes, os.path.join(OUT, "legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({"x": Exploit()}, os.path.join(OUT, "malicious.pth"))

    expected = {"torch": torch.__version__, "dtypes.pth": describe(dtypes), "views.pth": describe(views)}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))


def full(synth, out):
    import torchvision
    from safetensors.torch import load_file

    model = torchvision.models.resnet18()
    model.load_state_dict(load_file(synth))
    torch.save(model.state_dict(), out)
    print(out, os.path.getsize(out))


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--full":
        full(sys.argv[2], sys.argv[3])
    else:
        main()
