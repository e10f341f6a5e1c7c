//! `resnet classify` (and `preprocess`, whose tensors it reads) as a real process: logits against
//! PyTorch's, bad files among good ones, configuration errors, labels, folders, globs, JSONL and
//! CSV streaming, threads.

mod common;

use common::{golden, image, max_abs_diff, repo, resnet, resnet_with, stderr, synth};
use serde_json::Value;
use std::path::PathBuf;

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
    let out = resnet_with(&[
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
    let out = resnet_with(&args);
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
    let out = resnet_with(&[
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
    let out = resnet_with(&[&"classify", &image("cat_baseline.jpg")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--weights FILE") && stderr(&out).contains("resnet weights synth"),
        "{}",
        stderr(&out)
    );

    let out = resnet_with(&[
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

    let out = resnet_with(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--backend",
        &"nope",
        &image("cat_baseline.jpg"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown backend"), "{}", stderr(&out));

    let out = resnet_with(&[&"classify", &"--bogus-flag", &image("cat_baseline.jpg")]);
    assert_eq!(out.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "a\nb\n").unwrap();
    let out = resnet_with(&[
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

/// A bad `--backend` or Winograd policy (flag or `RESNET_WINOGRAD`) is a usage error whose
/// message names the value given and lists the accepted ones.
#[test]
fn unknown_backend_and_winograd_policy_name_the_value_and_the_choices() {
    let available: Vec<&str> = resnet_core::backend::BackendKind::ALL
        .iter()
        .map(|k| k.name())
        .collect();
    let out = resnet_with(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--backend",
        &"natve",
        &image("cat_baseline.jpg"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let want = format!(
        "unknown backend 'natve' (available: {})",
        available.join(", ")
    );
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));

    let want = "unknown Winograd policy 'sometimes' (use off, auto or all)";
    let out = resnet_with(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--winograd",
        &"sometimes",
        &image("cat_baseline.jpg"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(want), "{}", stderr(&out));
    let out = resnet()
        .env("RESNET_WINOGRAD", "sometimes")
        .arg("classify")
        .arg("--weights")
        .arg(synth())
        .arg(image("cat_baseline.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(want), "{}", stderr(&out));
}

#[test]
fn custom_labels_replace_the_builtin_ones() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.json");
    let names: Vec<String> = (0..1000).map(|i| format!("thing-{i}")).collect();
    std::fs::write(&labels, serde_json::to_string(&names).unwrap()).unwrap();
    let out = resnet_with(&[
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
    let out = resnet_with(&[&"preprocess", &image("astronaut_rgb.png"), &"--out", &npy]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let a = resnet_with(&[
        &"classify",
        &"--weights",
        &synth(),
        &"--format",
        &"json",
        &"--logits",
        &npy,
    ]);
    let b = resnet_with(&[
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
    let out = resnet_with(&[&"classify", &"--weights", &synth(), &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.npy"), "{}", stderr(&out));
}

#[test]
fn threads_flag_and_native_backend_agree_with_reference() {
    let img = image("dogs_lossless.webp");
    let mut logits = Vec::new();
    for backend in ["reference", "native", "gemm"] {
        let out = resnet_with(&[
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
    let out = resnet_with(&[&"--threads", &"0", &"inspect"]);
    assert_eq!(out.status.code(), Some(2));
}

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
    let out = resnet_with(&[
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
    let out = resnet_with(&[
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
    let out = resnet_with(&[
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
