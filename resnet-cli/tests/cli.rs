//! Integration tests of the `resnet` binary: real processes, real files, every exit code.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn image(name: &str) -> PathBuf {
    repo().join("testdata/images").join(name)
}

/// The binary with a hermetic environment: no weights from the caller's environment, an empty
/// cache of its own, and no network unless a test turns it on.
fn resnet_cmd() -> Command {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resnet"));
    for var in [
        "RESNET_WEIGHTS",
        "RESNET_ISA",
        "RESNET_WEIGHTS_URL",
        "RESNET_WEIGHTS_SHA256",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RESNET_CACHE", cache.path())
        .env("RESNET_OFFLINE", "1");
    cmd
}

fn resnet(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = resnet_cmd();
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run resnet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Synthetic weights written once by the binary itself, shared by the tests of this run.
fn synth() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = resnet(&[
            &"weights",
            &"synth",
            &"--seed",
            &"0",
            &"--out",
            &dir.path().join("synth.safetensors"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        dir
    });
    Box::leak(dir.path().join("synth.safetensors").into_boxed_path())
}

fn golden() -> Value {
    let p = repo().join("resnet-core/tests/data/golden/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn max_abs_diff(a: &[Value], b: &[Value]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

#[test]
fn json_logits_match_pytorch_for_images_and_npy() {
    let g = golden();
    let case = |name: &str| {
        g["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["image"] == name)
            .unwrap()
            .clone()
    };
    let npy = repo().join("resnet-core/tests/data/golden/cat_baseline.input.npy");
    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"json",
        &"--logits",
        &npy,
        &image("astronaut_rgb.png"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("synthetic"),
        "synthetic weights must be announced"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    // .npy: exactly PyTorch's input. PNG: our preprocessing is bit-identical to PIL's.
    for (item, name) in items.iter().zip(["cat_baseline.jpg", "astronaut_rgb.png"]) {
        let want = case(name);
        let d = max_abs_diff(
            item["logits"].as_array().unwrap(),
            want["logits"].as_array().unwrap(),
        );
        assert!(d <= 1e-3, "{name}: logits differ from PyTorch by {d}");
        let top: Vec<u64> = item["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["index"].as_u64().unwrap())
            .collect();
        let want_top: Vec<u64> = want["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(top, want_top, "{name}");
        let p0 = &item["predictions"][0];
        assert_eq!(p0["rank"], 1);
        assert!(p0["label"].is_string() && p0["probability"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bad_files_fail_one_by_one_and_the_batch_goes_on() {
    let bad_dir = repo().join("testdata/images/bad");
    let mut bad: Vec<PathBuf> = std::fs::read_dir(&bad_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    bad.sort();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"classify", &"--format", &"json", &"--weights"];
    let w = synth();
    args.push(&w);
    let good = image("cat_baseline.jpg");
    let good2 = image("flower.gif");
    args.push(&good);
    for b in &bad {
        args.push(b);
    }
    args.push(&good2);
    let out = resnet(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), bad.len() + 2);
    assert!(items[0]["predictions"].is_array());
    assert!(items.last().unwrap()["predictions"].is_array());
    let err = stderr(&out);
    for (item, path) in items[1..].iter().zip(&bad) {
        let name = path.file_name().unwrap().to_str().unwrap();
        let e = item["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} should fail: {item}"));
        assert!(e.contains(name), "{e}");
        assert!(err.contains(name), "stderr must name {name}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn text_output_lists_top_k() {
    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--top-k",
        &"3",
        &image("cat_24bit.bmp"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].ends_with("cat_24bit.bmp"));
    assert!(lines[1].trim_start().starts_with("1.") && lines[1].contains('%'));
}

#[test]
fn configuration_errors_exit_2_with_a_hint() {
    let out = resnet(&[&"classify", &image("cat_baseline.jpg")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--weights FILE") && stderr(&out).contains("resnet weights synth"),
        "{}",
        stderr(&out)
    );

    let out = resnet(&[
        &"classify",
        &"--weights",
        &"/nonexistent.safetensors",
        &image("cat_baseline.jpg"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent.safetensors"),
        "{}",
        stderr(&out)
    );

    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--backend",
        &"nope",
        &image("cat_baseline.jpg"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown backend"), "{}", stderr(&out));

    let out = resnet(&[&"classify", &"--bogus-flag", &image("cat_baseline.jpg")]);
    assert_eq!(out.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "a\nb\n").unwrap();
    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--labels",
        &labels,
        &image("cat_baseline.jpg"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("labels.txt") && stderr(&out).contains("found 2"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn custom_labels_replace_the_builtin_ones() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.json");
    let names: Vec<String> = (0..1000).map(|i| format!("thing-{i}")).collect();
    std::fs::write(&labels, serde_json::to_string(&names).unwrap()).unwrap();
    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"json",
        &"--labels",
        &labels,
        &image("cat_24bit.bmp"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v[0]["predictions"][0];
    assert_eq!(
        p["label"].as_str().unwrap(),
        format!("thing-{}", p["index"])
    );
}

#[test]
fn preprocess_writes_what_classify_reads() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("cat.npy");
    let out = resnet(&[&"preprocess", &image("astronaut_rgb.png"), &"--out", &npy]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let a = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"json",
        &"--logits",
        &npy,
    ]);
    let b = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"json",
        &"--logits",
        &image("astronaut_rgb.png"),
    ]);
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&a.stdout).unwrap(),
        serde_json::from_slice(&b.stdout).unwrap(),
    );
    assert_eq!(a[0]["logits"], b[0]["logits"]);

    // A .npy of the wrong shape is a per-input error.
    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }                                                          \n\x00\x00\x00\x00\x00\x00\x00\x00").unwrap();
    let out = resnet(&[&"classify", &"--weights", &synth(), &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.npy"), "{}", stderr(&out));
}

#[test]
fn synth_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let out = resnet(&[&"weights", &"synth", &"--seed", &"0", &"--out", &a]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(synth()).unwrap());
}

#[test]
fn inspect_prints_totals() {
    let out = resnet(&[&"inspect"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("11689512 parameters") && text.contains("1.814 G"),
        "{text}"
    );
    assert!(text.contains("layer2.0.downsample.0"));
}

#[test]
fn threads_flag_and_native_backend_agree_with_reference() {
    let img = image("dogs_lossless.webp");
    let mut logits = Vec::new();
    for backend in ["reference", "native", "gemm"] {
        let out = resnet(&[
            &"--threads",
            &"1",
            &"classify",
            &"--backend",
            &backend,
            &"--weights",
            &synth(),
            &"--format",
            &"json",
            &"--logits",
            &img,
        ]);
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        logits.push(v[0]["logits"].as_array().unwrap().clone());
    }
    // Tolerance as in resnet-core/tests/backends_agree.rs: 1e-3 absolute on logits.
    assert!(max_abs_diff(&logits[0], &logits[1]) <= 1e-3);
    assert!(max_abs_diff(&logits[0], &logits[2]) <= 1e-3);
    let out = resnet(&[&"--threads", &"0", &"inspect"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_reports_every_backend_as_json() {
    let out = resnet(&[
        &"--threads",
        &"2",
        &"bench",
        &"--weights",
        &synth(),
        &"--backend",
        &"gemm,native",
        &"--batch",
        &"1",
        &"--iters",
        &"1",
        &"--format",
        &"json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(r["median_ms"].as_f64().unwrap() > 0.0);
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
    }
    assert!(v["peak_gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(v["synthetic_weights"], true);
}

// ---- weights: .pth, info, convert, fetch and the cache ----

/// What the test HTTP server does with each request.
#[derive(Clone)]
enum Serve {
    /// 200 with this body.
    Body(Vec<u8>),
    /// 404.
    NotFound,
    /// Announces the whole body, sends this many bytes, then closes the connection.
    DropAfter(Vec<u8>, usize),
    /// Reads the request and then says nothing for this long.
    Stall(std::time::Duration),
}

/// A one-purpose HTTP/1.1 server on 127.0.0.1 (no internet here, and none needed): serves every
/// connection the same way until the test ends. Returns the URL of `/resnet18.pth`.
fn http_server(serve: Serve) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/resnet18.pth", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = match serve {
                    Serve::Body(body) => stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .as_bytes(),
                        )
                        .and_then(|_| stream.write_all(&body)),
                    Serve::NotFound => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                    Serve::DropAfter(body, n) => stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .as_bytes(),
                        )
                        .and_then(|_| stream.write_all(&body[..n])),
                    Serve::Stall(d) => {
                        std::thread::sleep(d);
                        Ok(())
                    }
                };
            });
        }
    });
    url
}

/// A full-size synthetic checkpoint in PyTorch's format and its SHA-256 (from `weights info`).
fn synth_pth() -> &'static (Vec<u8>, String) {
    static PTH: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    PTH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synth.pth");
        let out = resnet(&[&"weights", &"synth", &"--seed", &"0", &"--out", &path]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = resnet(&[&"weights", &"info", &path, &"--format", &"json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["format"], "PyTorch .pth (zip)");
        assert_eq!(info["parameters"], 11_689_512);
        assert_eq!(info["resnet18"], "valid torchvision ResNet-18 state dict");
        (
            std::fs::read(&path).unwrap(),
            info["sha256"].as_str().unwrap().to_string(),
        )
    })
}

/// Files in a cache directory (including hidden temporaries).
fn cache_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn fetch(url: &str, cache: &Path, extra: &[&str]) -> Output {
    let mut cmd = resnet_cmd();
    cmd.env("RESNET_CACHE", cache)
        .env_remove("RESNET_OFFLINE")
        .args(["weights", "fetch", "--url", url])
        .args(extra);
    cmd.output().unwrap()
}

#[test]
fn fetch_verifies_converts_and_caches() {
    let (pth, sha) = synth_pth();
    let url = http_server(Serve::Body(pth.clone()));
    let cache = tempfile::tempdir().unwrap();
    let out = fetch(&url, cache.path(), &["--sha256", sha]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cached = cache
        .path()
        .join(format!("resnet18-{}.safetensors", &sha[..8]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cached.display().to_string()
    );
    assert!(
        stderr(&out).contains(&format!("verified SHA-256 {sha}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        cache_files(cache.path()),
        [cached.file_name().unwrap().to_string_lossy()]
    );

    // The cached safetensors classifies exactly as the .pth it came from.
    let pth_file = cache
        .path()
        .join("..")
        .join(format!("synth-{}.pth", std::process::id()));
    std::fs::write(&pth_file, pth).unwrap();
    let run = |weights: &Path| {
        let out = resnet(&[
            &"classify",
            &"--weights",
            &weights,
            &"--format",
            &"json",
            &"--logits",
            &image("cat_baseline.jpg"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(run(&cached), run(&pth_file));
    std::fs::remove_file(&pth_file).unwrap();

    // A second fetch finds it cached and does not download.
    let out = fetch(
        "http://127.0.0.1:9/unreachable.pth",
        cache.path(),
        &["--sha256", sha],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already cached"), "{}", stderr(&out));
}

#[test]
fn fetch_refuses_a_hash_mismatch_and_caches_nothing() {
    let (pth, _) = synth_pth();
    let url = http_server(Serve::Body(pth.clone()));
    let cache = tempfile::tempdir().unwrap();
    // Default: the official hash, which synthetic weights do not have.
    let out = fetch(&url, cache.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("SHA-256 mismatch") && err.contains("expected f37072fd"),
        "{err}"
    );
    assert!(
        cache_files(cache.path()).is_empty(),
        "{:?}",
        cache_files(cache.path())
    );
}

#[test]
fn fetch_survives_a_dropped_connection_a_404_and_a_stalled_server() {
    let (pth, sha) = synth_pth();
    let cache = tempfile::tempdir().unwrap();

    let url = http_server(Serve::DropAfter(pth.clone(), pth.len() / 2));
    let out = fetch(&url, cache.path(), &["--sha256", sha]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
    assert!(
        cache_files(cache.path()).is_empty(),
        "{:?}",
        cache_files(cache.path())
    );

    let url = http_server(Serve::NotFound);
    let out = fetch(&url, cache.path(), &["--sha256", sha]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("answered 404"), "{}", stderr(&out));
    assert!(cache_files(cache.path()).is_empty());

    let url = http_server(Serve::Stall(std::time::Duration::from_secs(20)));
    let started = std::time::Instant::now();
    let out = fetch(&url, cache.path(), &["--sha256", sha, "--timeout-s", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        started.elapsed().as_secs() < 15,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).to_lowercase().contains("timed out"),
        "{}",
        stderr(&out)
    );
    assert!(cache_files(cache.path()).is_empty());
}

#[test]
fn fetch_refuses_plain_http_to_other_hosts() {
    let cache = tempfile::tempdir().unwrap();
    let out = fetch("http://weights.example/resnet18.pth", cache.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refusing plain http") && stderr(&out).contains("--allow-http"),
        "{}",
        stderr(&out)
    );
    let out = fetch("ftp://weights.example/resnet18.pth", cache.path(), &[]);
    assert!(
        stderr(&out).contains("unsupported URL scheme"),
        "{}",
        stderr(&out)
    );
}

/// The README's main command on a fresh machine: no weights anywhere, so `classify` downloads
/// them once (here from a mirror on loopback), and the next run works offline from the cache.
#[test]
fn classify_with_no_setup_downloads_once_then_runs_offline() {
    let (pth, sha) = synth_pth();
    let url = http_server(Serve::Body(pth.clone()));
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = resnet_cmd();
    cmd.env("RESNET_CACHE", cache.path())
        .env_remove("RESNET_OFFLINE")
        .env("RESNET_WEIGHTS_URL", &url)
        .env("RESNET_WEIGHTS_SHA256", sha)
        .args(["classify", "--format", "json"])
        .arg(image("cat_baseline.jpg"));
    let first = cmd.output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("downloading the official weights (once)"),
        "{}",
        stderr(&first)
    );

    let mut cmd = resnet_cmd();
    cmd.env("RESNET_CACHE", cache.path())
        .env("RESNET_WEIGHTS_SHA256", sha)
        .args(["classify", "--format", "json"])
        .arg(image("cat_baseline.jpg"));
    let second = cmd.output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        !stderr(&second).contains("downloading"),
        "{}",
        stderr(&second)
    );
    assert_eq!(first.stdout, second.stdout);
}

#[test]
fn offline_without_weights_says_what_was_tried_and_how_to_fix_it() {
    let out = resnet(&[&"classify", &image("cat_baseline.jpg")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        "--weights (not given)",
        "$RESNET_WEIGHTS (not set)",
        "does not exist",
        "--offline or RESNET_OFFLINE=1",
        "resnet weights fetch",
        "resnet weights convert",
    ] {
        assert!(err.contains(needle), "missing '{needle}' in: {err}");
    }
}

#[test]
fn convert_and_info_round_trip_pth_and_safetensors() {
    let (pth, _) = synth_pth();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pth");
    std::fs::write(&input, pth).unwrap();
    let st = dir.path().join("out.safetensors");
    let out = resnet(&[&"weights", &"convert", &input, &st, &"--dtype", &"f16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = resnet(&[&"weights", &"info", &st, &"--format", &"json"]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "safetensors");
    assert_eq!(info["dtypes"]["F16"], 102);
    assert_eq!(info["dtypes"]["I64"], 20);
    assert_eq!(info["tensors"], 122);
    assert!(info["batch_norm_statistics"]
        .as_str()
        .unwrap()
        .starts_with("present (20"));
    assert!(info["official"].as_str().unwrap().starts_with("no"));

    // Back to .pth, and the text form of info.
    let back = dir.path().join("back.pth");
    let out = resnet(&[&"weights", &"convert", &st, &back]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = resnet(&[&"weights", &"info", &back]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PyTorch .pth (zip)") && text.contains("parameters  11689512"),
        "{text}"
    );

    // Broken and hostile inputs: clear errors naming the file.
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, &pth[..pth.len() / 3]).unwrap();
    let out = resnet(&[
        &"weights",
        &"convert",
        &bad,
        &dir.path().join("x.safetensors"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.pth: not a readable PyTorch checkpoint"),
        "{}",
        stderr(&out)
    );
    let evil = repo().join("resnet-core/tests/data/pth/malicious.pth");
    let out = resnet(&[&"weights", &"info", &evil]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("GLOBAL posix.system"),
        "{}",
        stderr(&out)
    );
}

// ---- classify at scale, trace, eval, completions, logging ----

#[test]
fn classify_takes_directories_and_globs_and_streams_jsonl_and_csv() {
    let images = repo().join("testdata/images");
    let expected_files = {
        let mut n = 0;
        for dir in [images.clone(), images.join("bad")] {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                n += (p.is_file() && p.extension().is_none_or(|e| e != "md")) as usize;
            }
        }
        n
    };
    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"jsonl",
        &"--batch-size",
        &"3",
        &images,
    ]);
    // testdata/images/bad holds malformed files: they fail one by one, the rest succeed.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected_files);
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "directory order is sorted");
    let failed: Vec<&Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert!(failed
        .iter()
        .all(|l| l["path"].as_str().unwrap().contains("/bad/")));
    assert!(!failed.is_empty());
    assert!(lines
        .iter()
        .filter(|l| l.get("error").is_none())
        .all(|l| l["predictions"].as_array().unwrap().len() == 5));

    // A glob (quoted, so the tool expands it), a missing file, CSV with a header.
    let pattern = images.join("*.webp");
    let out = resnet(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"csv",
        &"--top-k",
        &"2",
        &pattern,
        &"missing.jpg",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows[0],
        "path,error,index_1,label_1,probability_1,index_2,label_2,probability_2"
    );
    assert_eq!(rows.len(), 4, "{text}");
    assert!(
        rows[1].contains("dogs_lossless.webp,,") && rows[2].contains("fig_lossy.webp,,"),
        "{text}"
    );
    assert!(
        rows[3].starts_with("missing.jpg,missing.jpg: no such file or directory"),
        "{text}"
    );
    assert!(stderr(&out).contains("missing.jpg: no such file or directory"));

    // JSON is one array whatever the batch size; --quiet leaves only errors on stderr.
    let out = resnet(&[
        &"classify",
        &"-q",
        &"--weights",
        &synth(),
        &"--format",
        &"json",
        &"--batch-size",
        &"1",
        &image("cat_24bit.bmp"),
        &image("flower.gif"),
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(stderr(&out), "", "--quiet");
}

fn read_npy(path: &Path) -> ndarray::ArrayD<f32> {
    use ndarray_npy::ReadNpyExt;
    ndarray::ArrayD::<f32>::read_npy(std::fs::File::open(path).unwrap()).unwrap()
}

/// `trace --dump` writes what PyTorch's forward hooks saw, layer by layer: the golden fixture's
/// sampled activations (torchvision, same weights, same input tensor) within 1e-3 (the
/// foundation's tolerance; the reference backend accumulates in f64, so it is far closer).
#[test]
fn trace_dump_matches_pytorch_per_layer() {
    let g = golden();
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["image"] == "cat_baseline.jpg")
        .unwrap();
    let npy = repo().join("resnet-core/tests/data/golden/cat_baseline.input.npy");
    let dir = tempfile::tempdir().unwrap();
    let out = resnet(&[
        &"trace",
        &"--weights",
        &synth(),
        &"--backend",
        &"reference",
        &npy,
        &"--dump",
        &dir.path(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let trace = case["trace"].as_object().unwrap();
    for (point, summary) in trace {
        assert!(
            text.contains(&format!("\n{point:<10} ")),
            "{point} missing in:\n{text}"
        );
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(&format!("_{point}.npy"))
            })
            .unwrap_or_else(|| panic!("no dump for {point}"));
        let a = read_npy(&file);
        let want_shape: Vec<usize> = summary["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            a.len(),
            want_shape.iter().product::<usize>(),
            "{point} size"
        );
        let flat: Vec<f32> = a.iter().copied().collect();
        for (idx, want) in summary["sample_index"]
            .as_array()
            .unwrap()
            .iter()
            .zip(summary["sample_value"].as_array().unwrap())
        {
            let got = flat[idx.as_u64().unwrap() as usize] as f64;
            assert!(
                (got - want.as_f64().unwrap()).abs() <= 1e-3,
                "{point}[{idx}]: {got} vs {want}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), trace.len());
}

#[test]
fn trace_compare_reports_error_and_sqnr_per_layer() {
    let out = resnet(&[
        &"trace",
        &"--weights",
        &synth(),
        &"--backend",
        &"native",
        &"--compare",
        &"reference",
        &"--format",
        &"json",
        &image("cat_24bit.bmp"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        let err = r["versus"]["max_abs_error"].as_f64().unwrap();
        // f32 native vs f64 reference: rounding only. A wrong layer gives errors of order 1 and
        // an SQNR near 0 dB.
        assert!(err < 1e-3, "{}: {err}", r["layer"]);
        let sqnr = r["versus"]["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(sqnr > 80.0, "{}: {sqnr} dB", r["layer"]);
        assert!(r["zeros"].as_f64().unwrap() >= 0.0 && r["std"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(rows[0]["layer"], "stem");
    assert_eq!(rows[11]["layer"], "fc");
}

/// The network's own top-5 for some photos, to build evaluation sets with known answers.
fn top5(images: &[&str]) -> Vec<Vec<u64>> {
    let paths: Vec<PathBuf> = images.iter().map(|i| image(i)).collect();
    let weights = synth().to_path_buf();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"classify", &"--weights", &weights, &"--format", &"json"];
    for p in &paths {
        args.push(p);
    }
    let out = resnet(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["index"].as_u64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn eval_counts_top1_and_top5_on_sets_with_known_answers() {
    let names = [
        "astronaut_rgb.png",
        "cat_24bit.bmp",
        "fig_lossy.webp",
        "flower.gif",
    ];
    let best = top5(&names);
    let outside = |t: &Vec<u64>| (0..1000).find(|i| !t.contains(i)).unwrap();
    // Labels: right, right, in the top 5 but not first, outside the top 5.
    let truth = [best[0][0], best[1][0], best[2][2], outside(&best[3])];
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("filename,index\n");
    for (n, t) in names.iter().zip(truth) {
        std::fs::copy(image(n), dir.path().join(n)).unwrap();
        csv.push_str(&format!("{n},{t}\n"));
    }
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    let out = resnet(&[
        &"eval",
        &"--weights",
        &synth(),
        &dir.path(),
        &"--labels-file",
        &labels,
        &"--format",
        &"json",
        &"--batch-size",
        &"3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["images"], 4);
    assert_eq!(r["top1"].as_f64().unwrap(), 50.0);
    assert_eq!(r["top5"].as_f64().unwrap(), 75.0);
    let missed = r["most_missed"].as_array().unwrap();
    assert_eq!(missed.len(), 2);

    // --limit takes the first N in sorted order: astronaut (right), cat (right).
    let out = resnet(&[
        &"eval",
        &"--weights",
        &synth(),
        &dir.path(),
        &"--labels-file",
        &labels,
        &"--limit",
        &"2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("top-1 100.000% (2/2)  top-5 100.000% (2/2)"),
        "{text}"
    );

    // ImageNet layout: DIR/<wnid>/ with wnids in the standard sorted order (n01440764 = 0).
    let wnids: Vec<String> = std::fs::read_to_string(repo().join("weights/imagenet_wnids.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let set = tempfile::tempdir().unwrap();
    for (n, class) in [(names[0], best[0][0]), (names[3], outside(&best[3]))] {
        let folder = set.path().join(&wnids[class as usize]);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(image(n), folder.join(n)).unwrap();
    }
    let out = resnet(&[
        &"eval",
        &"--weights",
        &synth(),
        &set.path(),
        &"--format",
        &"json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["images"].as_u64(), r["top1"].as_f64(), r["top5"].as_f64()),
        (Some(2), Some(50.0), Some(50.0))
    );

    // A folder that is not a wnid, and a flat folder without a labels file: clear errors.
    std::fs::create_dir_all(set.path().join("cats")).unwrap();
    let out = resnet(&[&"eval", &"--weights", &synth(), &set.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("folder 'cats' is not an ImageNet-1k WordNet id"),
        "{}",
        stderr(&out)
    );
    let out = resnet(&[&"eval", &"--weights", &synth(), &dir.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--labels-file"), "{}", stderr(&out));
}

#[test]
fn completions_for_every_shell_and_logging_levels() {
    for shell in ["bash", "zsh", "fish"] {
        let out = resnet(&[&"completions", &shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("classify") && script.contains("trace"),
            "{shell}"
        );
    }
    let out = resnet(&[&"completions", &"tcsh"]);
    assert_eq!(out.status.code(), Some(2));

    // Default: notes and warnings; RUST_LOG=debug adds debug lines; NO_COLOR: no escapes.
    let mut cmd = resnet_cmd();
    cmd.env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .args(["classify", "--weights"])
        .arg(synth())
        .arg(image("flower.gif"));
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("warning: ") && err.contains("synthetic weights"),
        "{err}"
    );
    assert!(err.contains("debug: 1 inputs"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}
