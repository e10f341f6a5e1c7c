"""tritonclient[http] against the KServe v2 surface. Prints one JSON object with what each call
returned; the Rust test makes the assertions. argv: port npy image...
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

port, npy, images = sys.argv[1], sys.argv[2], sys.argv[3:]
c = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", network_timeout=120.0, connection_timeout=60.0)
out = {
    "live": c.is_server_live(),
    "ready": c.is_server_ready(),
    "model_ready": c.is_model_ready("resnet18"),
    "server": c.get_server_metadata(),
    "metadata": c.get_model_metadata("resnet18"),
    "config": c.get_model_config("resnet18"),
}

files = [open(p, "rb").read() for p in images]
image = httpclient.InferInput("image", [len(files)], "BYTES")
image.set_data_from_numpy(np.array(files, dtype=np.object_))  # binary: 4-byte length + bytes
r = c.infer("resnet18", [image], outputs=[
    httpclient.InferRequestedOutput("logits", binary_data=True),
    httpclient.InferRequestedOutput("probabilities", binary_data=False),
])
out["bytes_logits"] = r.as_numpy("logits").tolist()
out["bytes_probabilities"] = r.as_numpy("probabilities").tolist()
out["bytes_header_length"] = r.get_response() is not None

r = c.infer("resnet18", [image], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=3)])
out["classification_binary"] = [[s.decode() for s in row] for row in r.as_numpy("probabilities")]
r = c.infer("resnet18", [image], outputs=[httpclient.InferRequestedOutput("logits", binary_data=False, class_count=2)])
out["classification_json"] = [[s.decode() if isinstance(s, bytes) else s for s in row] for row in r.as_numpy("logits")]

x = np.load(npy).astype(np.float32)
if x.ndim == 3:
    x = x[None]
for name, binary in [("fp32_binary", True), ("fp32_json", False)]:
    t = httpclient.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    r = c.infer("resnet18", [t], request_id="req-" + name)  # no outputs: binary_data_output
    out[name] = r.as_numpy("logits").tolist()
    out[name + "_id"] = r.get_response().get("id")

for name, call in [
    ("unknown_model", lambda: c.is_model_ready("vgg16") or c.get_model_metadata("vgg16")),
    ("bad_image", lambda: c.infer("resnet18", [bad_input()])),
]:
    def bad_input():
        t = httpclient.InferInput("image", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        return t
    try:
        call()
        out[name] = {"raised": None}
    except InferenceServerException as e:
        out[name] = {"raised": str(e), "status": e.status()}
print(json.dumps(out))
