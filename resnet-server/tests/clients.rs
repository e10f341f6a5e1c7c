//! Real client libraries against the protocols other software speaks: `deepstack-python` (what
//! Home Assistant's scene component uses) and the CodeProject.AI SDK on `/v1/vision/scene`,
//! `tritonclient[http]` on the KServe v2 surface, schemathesis on `/openapi.json`. The Python
//! side only makes the calls and prints what it got back (tests/clients/*.py); the assertions
//! are here.
//!
//! The clients live in the venv `tools/test.sh` builds from tools/test-requirements.txt; it
//! exports `RESNET_TEST_PYTHON`. Without it the tests fail saying so, unless
//! `RESNET_CLIENTS_TEST=skip`.

mod util;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

const TOKEN: &str = "scene-secret";

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESNET_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    if std::env::var("RESNET_CLIENTS_TEST").as_deref() == Ok("skip") {
        eprintln!("RESNET_CLIENTS_TEST=skip: client-library tests skipped");
        return None;
    }
    panic!(
        "RESNET_TEST_PYTHON is not set: run tools/test.sh (it builds the Python venv with the \
         client libraries from tools/test-requirements.txt), or set RESNET_CLIENTS_TEST=skip"
    );
}

/// Runs `tests/clients/<script>` with `args`, killed after `limit`; its stdout's last line is JSON.
fn run_script(python: &PathBuf, script: &str, args: &[String], limit: Duration) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    // Output goes to files, not pipes: a pipe would fill up (the logits are large) and block.
    let stdout_file = tempfile::tempfile().unwrap();
    let stderr_file = tempfile::tempfile().unwrap();
    let mut child = Command::new(python)
        .arg(&path)
        .args(args)
        .stdout(Stdio::from(stdout_file.try_clone().unwrap()))
        .stderr(Stdio::from(stderr_file.try_clone().unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let read = |mut f: &std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            // SIGINT first: Python prints where it was stuck.
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} took longer than {limit:?}:\n{}\n{}",
                read(&stdout_file),
                read(&stderr_file)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = read(&stdout_file);
    assert!(
        status.success(),
        "{script} failed ({status}):\n{stdout}\n{}",
        read(&stderr_file)
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}"))
}

async fn script(script: &'static str, args: Vec<String>) -> Value {
    let python = match python() {
        Some(p) => p,
        None => return Value::Null,
    };
    tokio::task::spawn_blocking(move || {
        run_script(&python, script, &args, Duration::from_secs(120))
    })
    .await
    .unwrap()
}

fn path_arg(name: &str) -> String {
    image_path(name).display().to_string()
}

/// `/v1/classify?top_k=k` of one image, as (index, label, probability).
async fn classify_top(
    addr: std::net::SocketAddr,
    auth: Option<&str>,
    name: &str,
    k: usize,
) -> Vec<(u64, String, f64)> {
    let bytes = image_bytes(name);
    let body = multipart(&[("file", name, &bytes)]);
    let ct = multipart_type();
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", ct.as_str())];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    let path = format!("/v1/classify?top_k={k}");
    let r = send_raw(addr, &request("POST", &path, &headers, &body)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["label"].as_str().unwrap().to_string(),
                p["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn token_of(label: &str) -> String {
    label
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join("_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepstack_and_codeproject_clients_get_the_classify_top1() {
    if python().is_none() {
        return;
    }
    let keyed = start(
        resnet_server::Config {
            token: Some(TOKEN.into()),
            ..config()
        },
        model(),
    )
    .await;
    let open = start(config(), model()).await;
    let image = "cat_baseline.jpg";
    let top = classify_top(keyed.local_addr(), Some(TOKEN), image, 1).await[0].clone();
    let out = script(
        "deepstack_scene.py",
        vec![
            keyed.local_addr().port().to_string(),
            TOKEN.into(),
            open.local_addr().port().to_string(),
            path_arg(image),
            path_arg("bad/not_an_image.jpg"),
        ],
    )
    .await;

    // Same top-1 as /v1/classify. Probabilities may differ in the last bits when the two
    // requests ran in batches of different sizes (another summation order): 1e-5.
    for client in ["deepstack", "codeproject"] {
        let got = &out[client]["ok"];
        assert_eq!(got["label"], token_of(&top.1), "{client}: {out}");
        assert_eq!(got["index"], top.0, "{client}: {out}");
        assert_eq!(got["name"], top.1.as_str(), "{client}: {out}");
        let confidence = got["confidence"].as_f64().unwrap();
        assert!(
            (confidence - top.2).abs() < 1e-5,
            "{client}: {confidence} vs {}",
            top.2
        );
        assert!((0.0..=1.0).contains(&confidence));
        assert!(
            got.get("success").is_none(),
            "the clients strip 'success': {got}"
        );
    }
    // The library turns every non-200 into its exception with the status.
    for (case, status) in [
        ("deepstack_wrong_key", "401"),
        ("deepstack_missing_key", "401"),
        ("deepstack_bad_image", "400"),
    ] {
        assert_eq!(out[case]["raised"], "DeepstackException", "{case}: {out}");
        assert!(
            out[case]["message"].as_str().unwrap().ends_with(status),
            "{case}: {out}"
        );
    }
    for (case, status, error) in [
        ("raw_wrong_key", 401, "Incorrect api key"),
        ("raw_missing_key", 401, "Incorrect api key"),
        ("raw_bad_image", 400, "No valid image file found"),
    ] {
        assert_eq!(out[case]["status"], status, "{case}: {out}");
        assert_eq!(out[case]["body"]["success"], false, "{case}: {out}");
        let message = out[case]["body"]["error"].as_str().unwrap();
        assert!(message.starts_with(error), "{case}: {message}");
    }
    assert_eq!(out["custom_list"]["status"], 200);
    assert_eq!(out["custom_list"]["body"]["models"], serde_json::json!([]));
    assert_eq!(out["update"]["status"], 200);
    assert_eq!(out["update"]["body"]["updateAvailable"], false);
    assert_eq!(
        out["update"]["body"]["current"]["major"],
        env!("CARGO_PKG_VERSION_MAJOR").parse::<u64>().unwrap()
    );
    // The scene requests went through the same history as the other routes.
    let history = get_auth(keyed.local_addr(), "/v1/history", TOKEN)
        .await
        .json();
    let routes: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert!(routes.contains(&"scene"), "{routes:?}");
    let metrics =
        String::from_utf8(get_auth(keyed.local_addr(), "/metrics", TOKEN).await.body).unwrap();
    assert!(
        metrics.contains("resnet_http_requests_total{route=\"vision_scene\",status=\"200\"}"),
        "{metrics}"
    );
    keyed.shutdown().await;
    open.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_speaks_kserve_v2_with_bytes_fp32_binary_json_and_classification() {
    if python().is_none() {
        return;
    }
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let images = ["cat_baseline.jpg", "flower.gif", "astronaut_rgb.png"];
    let npy = util::repo_root().join("resnet-core/tests/data/golden/cat_baseline.input.npy");
    let mut args = vec![addr.port().to_string(), npy.display().to_string()];
    args.extend(images.iter().map(|i| path_arg(i)));
    let out = script("triton.py", args).await;

    assert_eq!(out["live"], true);
    assert_eq!(out["ready"], true);
    assert_eq!(out["model_ready"], true);
    assert_eq!(out["metadata"]["name"], "resnet18");
    assert_eq!(
        out["metadata"]["outputs"][0]["shape"],
        serde_json::json!([-1, 1000])
    );
    assert_eq!(out["config"]["max_batch_size"], 8);
    assert!(out["server"]["extensions"]
        .as_array()
        .unwrap()
        .contains(&Value::from("binary_tensor_data")));

    // BYTES input, a batch of three: binary logits and JSON probabilities agree with
    // /v1/classify (same decoder and preprocessing); 1e-5 for batch-order summation differences.
    let logits = out["bytes_logits"].as_array().unwrap();
    let probs = out["bytes_probabilities"].as_array().unwrap();
    assert_eq!((logits.len(), probs.len()), (3, 3));
    for (i, name) in images.iter().enumerate() {
        let top = classify_top(addr, None, name, 3).await;
        let p: Vec<f64> = probs[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let l: Vec<f64> = logits[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!((p.len(), l.len()), (1000, 1000));
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let argmax = l
            .iter()
            .enumerate()
            .fold(0, |b, (j, v)| if *v > l[b] { j } else { b });
        assert_eq!(argmax as u64, top[0].0, "{name}");
        for (index, _, probability) in &top {
            assert!(
                (p[*index as usize] - probability).abs() < 1e-5,
                "{name} class {index}"
            );
        }
        // The classification extension: "<value>:<index>:<label>", top 3 by probability.
        let classes = out["classification_binary"][i].as_array().unwrap();
        assert_eq!(classes.len(), 3);
        for (entry, (index, label, probability)) in classes.iter().zip(&top) {
            let s = entry.as_str().unwrap();
            let mut f = s.splitn(3, ':');
            let value: f64 = f.next().unwrap().parse().unwrap();
            assert_eq!(f.next().unwrap(), index.to_string(), "{s}");
            assert_eq!(f.next().unwrap(), label, "{s}");
            assert!((value - probability).abs() < 1e-5, "{s}");
        }
        let by_logit = out["classification_json"][i].as_array().unwrap();
        assert_eq!(by_logit.len(), 2);
        let first = by_logit[0].as_str().unwrap();
        assert!(first.contains(&format!(":{}:", top[0].0)), "{first}");
    }

    // FP32 input (preprocessed), binary and JSON: the model's own logits for that tensor.
    let tensor: ndarray::Array4<f32> = ndarray_npy::read_npy(&npy).unwrap();
    let expected = model()
        .backend
        .forward(tensor.view(), &mut resnet_core::backend::NoObserver)
        .unwrap();
    for case in ["fp32_binary", "fp32_json"] {
        let got: Vec<f32> = out[case][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), 1000, "{case}");
        // The same kernels on the same tensor; a batch of another size may sum in another
        // order: 1e-3 absolute on logits of magnitude ~10.
        let worst = got
            .iter()
            .zip(expected.row(0))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "{case}: max |diff| {worst}");
        assert_eq!(out[format!("{case}_id")], format!("req-{case}"));
    }
    assert_eq!(out["unknown_model"]["status"], "404", "{out}");
    assert!(out["unknown_model"]["raised"]
        .as_str()
        .unwrap()
        .contains("unknown model 'vgg16'"));
    assert_eq!(out["bad_image"]["status"], "400", "{out}");
    assert!(
        out["bad_image"]["raised"]
            .as_str()
            .unwrap()
            .contains("image[0]"),
        "{out}"
    );
    perf_analyzer_if_installed(addr).await;
    server.shutdown().await;
}

/// Triton's `perf_analyzer` against the server, when a real binary is on PATH: it reads the
/// model configuration and sends random FP32 `input` tensors at concurrency 1 for a few short
/// windows. PyPI's `perf-analyzer` is a placeholder without the binary (Triton ships it in its
/// SDK container), so most machines have none: the test says so in its output and goes on.
async fn perf_analyzer_if_installed(addr: std::net::SocketAddr) {
    let Some(binary) = which("perf_analyzer") else {
        let note = "NOTE: perf_analyzer was not run: no perf_analyzer binary on PATH (PyPI's \
                    perf-analyzer is a placeholder without it; Triton's SDK container has it)";
        println!("{note}");
        // Also a test artifact, which `.ci/run` prints: cargo shows a passing test's output to
        // no one.
        let notes = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is target/tmp")
            .join("test-artifacts")
            .join("notes");
        std::fs::create_dir_all(&notes).unwrap();
        std::fs::write(notes.join("perf_analyzer.txt"), format!("{note}\n")).unwrap();
        return;
    };
    let url = format!("127.0.0.1:{}", addr.port());
    let (status, text) = tokio::task::spawn_blocking(move || {
        // Output to a file, not a pipe that could fill while the child is polled.
        let log = tempfile::tempfile().unwrap();
        let mut child = Command::new(&binary)
            .args(["-m", "resnet18", "-u", &url, "-i", "http"])
            .args([
                "--concurrency-range",
                "1",
                "--measurement-interval",
                "1000",
                "--max-trials",
                "3",
            ])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log.try_clone().unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut log = log;
        log.seek(std::io::SeekFrom::Start(0)).unwrap();
        log.read_to_string(&mut text).unwrap();
        (status, text)
    })
    .await
    .unwrap();
    println!("perf_analyzer:\n{text}");
    let status = status.unwrap_or_else(|| panic!("perf_analyzer ran over 60 s:\n{text}"));
    assert!(status.success(), "perf_analyzer failed ({status}):\n{text}");
    assert!(text.contains("Throughput"), "{text}");
}

/// schemathesis (the OpenAPI fuzzer) against a server with a token, from the document the server
/// serves at `/openapi.json`: generated requests for every operation, and no answer may be a 5xx,
/// an undocumented status, content type or body. Then real uploads to the image routes, whose
/// success answers schemathesis cannot reach (it makes no valid images), checked against the same
/// document. Bounded: at most 6 examples per operation, a 35 s budget, the script killed at 120 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_documented_by_openapi_json() {
    if python().is_none() {
        return;
    }
    let server = start(
        resnet_server::Config {
            token: Some(TOKEN.into()),
            ..config()
        },
        model(),
    )
    .await;
    let addr = server.local_addr();
    let reports = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let _ = std::fs::remove_dir_all(&reports);
    let out = script(
        "schemathesis_run.py",
        vec![
            addr.port().to_string(),
            TOKEN.into(),
            reports.display().to_string(),
            path_arg("cat_baseline.jpg"),
        ],
    )
    .await;
    let output = out["output"].as_str().unwrap_or("");
    assert_eq!(out["failures"], serde_json::json!([]), "{output}");
    assert_eq!(out["exit"], 0, "schemathesis failed:\n{output}");
    // Every route was exercised: one operation per route.
    let tested = out["operations"].as_array().unwrap();
    assert_eq!(
        tested.len(),
        resnet_server::routes::Route::ALL.len(),
        "{tested:?}\n{output}"
    );
    for (call, result) in out["real"].as_object().unwrap() {
        assert_eq!(result["status"], 200, "{call}: {result}");
        assert_eq!(result["problem"], Value::Null, "{call}: {result}");
    }
    assert_eq!(out["real"].as_object().unwrap().len(), 6);
    server.shutdown().await;
}
