"""Real DeepStack / CodeProject.AI clients against /v1/vision/scene. Prints one JSON object
with what each call returned (or the exception it raised); the Rust test makes the assertions.

argv: keyed_port key open_port image bad_image
"""
import json
import sys

import requests
import deepstack.core as ds
import codeprojectai.core as cp

keyed_port, key, open_port, image, bad_image = sys.argv[1:6]
keyed_port, open_port = int(keyed_port), int(open_port)
img = open(image, "rb").read()
bad = open(bad_image, "rb").read()
out = {}


def strip_success(response):
    del response["success"]  # as the SDK's recognize() does
    return response


def attempt(name, fn):
    try:
        out[name] = {"ok": fn()}
    except Exception as e:  # the client library's own exception types
        out[name] = {"raised": type(e).__name__, "message": str(e)}


# deepstack-python, as Home Assistant's scene component uses it.
attempt("deepstack", lambda: ds.DeepstackScene(ip="127.0.0.1", port=keyed_port, api_key=key, timeout=60).recognize(img))
attempt("deepstack_wrong_key", lambda: ds.DeepstackScene(ip="127.0.0.1", port=keyed_port, api_key="wrong", timeout=60).recognize(img))
attempt("deepstack_missing_key", lambda: ds.DeepstackScene(ip="127.0.0.1", port=keyed_port, timeout=60).recognize(img))
attempt("deepstack_bad_image", lambda: ds.DeepstackScene(ip="127.0.0.1", port=keyed_port, api_key=key, timeout=60).recognize(bad))
# The raw bodies of the failures, as the library does not show them.
url = f"http://127.0.0.1:{keyed_port}/v1/vision/scene"
for name, data, blob in [("raw_wrong_key", {"api_key": "wrong"}, img), ("raw_missing_key", {}, img), ("raw_bad_image", {"api_key": key}, bad)]:
    r = requests.post(url, files={"image": blob}, data=data, timeout=60)
    out[name] = {"status": r.status_code, "body": r.json()}

# The CodeProject.AI SDK (PyPI codeproject-ai-api 0.1) ships its scene class commented out (inside
# a string) and its scene URL constant commented out, so the call goes through the SDK's own
# request function, process_image, as that class would make it.
out["codeproject_scene_class"] = hasattr(cp, "CodeProjectAIScene")
attempt("codeproject", lambda: strip_success(cp.process_image(
    url=cp.URL_BASE_VISION.format(ip="127.0.0.1", port=open_port) + "/scene",
    image_bytes=img, min_confidence=cp.DEFAULT_MIN_CONFIDENCE, timeout=60)))
r = requests.post(f"http://127.0.0.1:{open_port}/v1/vision/custom/list", timeout=60)
out["custom_list"] = {"status": r.status_code, "body": r.json()}
r = requests.get(f"http://127.0.0.1:{open_port}/v1/status/updateavailable", timeout=60)
out["update"] = {"status": r.status_code, "body": r.json()}
print(json.dumps(out))
