"""schemathesis against a running resnet serve, and real uploads checked against the same document.

Usage: schemathesis_run.py PORT TOKEN REPORT_DIR IMAGE

1. Fetches /openapi.json with the bearer token and runs the schemathesis CLI on it (generated
   requests for every operation; checks: no 5xx, documented status codes, content types and body
   schemas), bounded by --max-examples, --max-time and a hard subprocess timeout.
2. schemathesis cannot make a valid image, so its image requests end in 4xx: each image route is
   also called here with IMAGE and its success answer validated against the document.

Prints one JSON line: the CLI's exit code, its failures (from the JUnit report), the operations it
tested, and each real upload's status and validation error (null when it conforms).
"""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import requests
import schemathesis

port, token, report_dir, image = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
base = f"http://127.0.0.1:{port}"
auth = {"Authorization": f"Bearer {token}"}
report_dir.mkdir(parents=True, exist_ok=True)

document = requests.get(f"{base}/openapi.json", headers=auth, timeout=10)
document.raise_for_status()
schema_path = report_dir / "openapi.json"
schema_path.write_bytes(document.content)

junit = report_dir / "junit.xml"
cli = [
    sys.executable, "-m", "schemathesis.cli", "run", str(schema_path),
    "--url", base,
    "--header", f"Authorization: Bearer {token}",
    "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance",
    "--phases", "examples,coverage,fuzzing",
    "--max-examples", "6",
    "--max-time", "35",
    "--seed", "16",
    "--workers", "2",
    "--request-timeout", "15",
    "--report", "junit", "--report-junit-path", str(junit),
    "--generation-database", "none",
    "--no-color",
]
try:
    run = subprocess.run(cli, capture_output=True, text=True, timeout=50, cwd=report_dir)
    exit_code, output = run.returncode, run.stdout + run.stderr
except subprocess.TimeoutExpired as e:
    exit_code, output = "timeout", f"{e.stdout or ''}{e.stderr or ''}"

failures, operations = [], []
if junit.exists():
    for case in ET.parse(junit).getroot().iter("testcase"):
        operations.append(case.get("name"))
        for bad in list(case.iter("failure")) + list(case.iter("error")):
            failures.append({"operation": case.get("name"), "message": (bad.get("message") or bad.text or "")[:2000]})

# Real uploads: the success answers of the image routes against the document.
schema = schemathesis.openapi.from_path(str(schema_path))
with open(image, "rb") as f:
    jpeg = f.read()
files = lambda field: {field: ("cat.jpg", jpeg, "image/jpeg")}
uploads = {
    ("/v1/classify", "POST"): dict(files=files("file"), params={"top_k": 3}),
    ("/v1/classify/batch", "POST"): dict(files=[("files", ("a.jpg", jpeg, "image/jpeg")), ("files", ("b.txt", b"not an image", "text/plain"))]),
    ("/v1/cam", "POST"): dict(data=jpeg, headers={"Content-Type": "image/jpeg"}, params={"view": "crop"}),
    ("/predict", "POST"): dict(files=files("file")),
    ("/v1/trace", "POST"): dict(files=files("file"), params={"maps": 2}),
    ("/v1/vision/scene", "POST"): dict(files=files("image"), data={"api_key": token}),
}
real = {}
for (path, method), kwargs in uploads.items():
    headers = {**auth, **kwargs.pop("headers", {})}
    r = requests.request(method, base + path, headers=headers, timeout=30, **kwargs)
    try:
        schema[path][method].validate_response(r)
        problem = None
    except Exception as e:  # a FailureGroup or an AssertionError: what does not conform
        problem = f"{type(e).__name__}: {e}"[:2000]
    real[f"{method} {path}"] = {"status": r.status_code, "content_type": r.headers.get("content-type"), "problem": problem}

print(json.dumps({
    "exit": exit_code,
    "failures": failures,
    "operations": operations,
    "real": real,
    "output": output[-6000:],
}))
