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

fn resnet(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resnet"));
    cmd.env_remove("RESNET_WEIGHTS").env_remove("RESNET_ISA");
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
        stderr(&out).contains("--weights") && stderr(&out).contains("resnet weights synth"),
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
