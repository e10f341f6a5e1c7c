//! `resnet tune` as a user runs it: a plan per backend (`int8`, `bf16`) written into the cache,
//! picked up by the commands that run that backend (`--plan auto`), shown by `inspect`, refused
//! for another backend. Small budgets: the plans' quality is a benchmark matter, not a test's.

mod common;

use common::{image, resnet, stderr, synth};
use std::path::{Path, PathBuf};
use std::process::Output;

/// `resnet` with its own cache folder (plans are written there).
fn run(cache: &Path, args: &[&str]) -> Output {
    resnet()
        .env("RESNET_CACHE", cache)
        .args(args)
        .output()
        .unwrap()
}

fn plans(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.join("plans"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// `resnet tune --backend <backend>` at batch 1 with a 4 s budget into `cache`: the table's
/// rows (checked: one per convolution, each naming a kernel with `kernel_mark` in its name) and
/// the one plan file it cached (checked: named for the backend and batch 1, 20 layers).
fn tune(
    cache: &Path,
    backend: &str,
    weights: &str,
    kernel_mark: &str,
) -> (PathBuf, serde_json::Value) {
    let out = run(
        cache,
        &[
            "-q",
            "tune",
            "--backend",
            backend,
            "--weights",
            weights,
            "--budget-s",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(" direct ") || l.contains(" in-place "))
        .collect();
    assert_eq!(rows.len(), 20, "{table}");
    assert!(rows.iter().all(|r| r.contains(kernel_mark)), "{table}");
    let files = plans(cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with(&format!("{backend}-t")) && name.contains("-b1-"),
        "{name}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(plan["backend"], backend);
    assert_eq!(plan["layers"].as_array().unwrap().len(), 20);
    (files[0].clone(), plan)
}

#[test]
fn an_int8_plan_is_tuned_cached_and_used_by_the_int8_backend_only() {
    let cache = tempfile::tempdir().unwrap();
    let weights = synth().to_str().unwrap();
    // One row per convolution (20), each naming an INT8 kernel.
    let (file, plan) = tune(cache.path(), "int8", weights, "_i32_");
    // Every timed candidate of an INT8 layer is bit-exact, so accepted with error 0.
    for layer in plan["layers"].as_array().unwrap() {
        for c in layer["candidates"].as_array().unwrap() {
            assert_eq!(c["accepted"], true, "{c}");
            assert_eq!(c["max_rel_error"], 0.0, "{c}");
        }
    }

    // The int8 backend picks it up; native has no plan of its own and runs the heuristic.
    let photo = image("cat_baseline.jpg");
    let photo = photo.to_str().unwrap();
    let int8 = run(
        cache.path(),
        &[
            "-vv",
            "classify",
            "--backend",
            "int8",
            "--weights",
            weights,
            photo,
        ],
    );
    assert!(int8.status.success(), "{}", stderr(&int8));
    let log = stderr(&int8);
    let path = file.display().to_string();
    assert!(
        log.contains(&format!("plan: {path}")),
        "the backend's description names the plan: {log}"
    );
    let off = run(
        cache.path(),
        &[
            "-vv",
            "classify",
            "--backend",
            "int8",
            "--plan",
            "off",
            "--weights",
            weights,
            photo,
        ],
    );
    assert!(off.status.success(), "{}", stderr(&off));
    assert!(stderr(&off).contains("plan: off"), "{}", stderr(&off));
    // The same classes and probabilities with and without the plan (bit-exact kernels).
    assert_eq!(int8.stdout, off.stdout);
    let native = run(
        cache.path(),
        &["-vv", "classify", "--weights", weights, photo],
    );
    assert!(stderr(&native).contains("plan: off"), "{}", stderr(&native));

    let inspect = run(cache.path(), &["inspect"]);
    let text = String::from_utf8(inspect.stdout).unwrap();
    assert!(
        text.contains("int8 plan (auto, batch 1") && text.contains(&path),
        "{text}"
    );
    assert!(text.contains("native plan (auto, batch 1"), "{text}");

    // The int8 plan given to native: an error naming the file and the two backends.
    let wrong = run(
        cache.path(),
        &["classify", "--plan", &path, "--weights", weights, photo],
    );
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    let err = stderr(&wrong);
    assert!(
        err.contains(&path) && err.contains("a plan for the int8 backend, not for native"),
        "{err}"
    );
}

#[test]
fn a_bf16_plan_is_tuned_cached_and_used_by_the_bf16_backend() {
    let cache = tempfile::tempdir().unwrap();
    let weights = synth().to_str().unwrap();
    // One row per convolution (20), each naming a bf16 kernel.
    let (file, plan) = tune(cache.path(), "bf16", weights, "bf16_f32_");
    // A chosen candidate was accepted: within one bf16 rounding step (2^-7 of the layer's
    // largest magnitude) of the heuristic's im2col.
    for layer in plan["layers"].as_array().unwrap() {
        for c in layer["candidates"].as_array().unwrap() {
            if c["choice"] == layer["choice"] {
                assert_eq!(c["accepted"], true, "{c}");
                assert!(c["max_rel_error"].as_f64().unwrap() <= 1.0 / 128.0, "{c}");
            }
        }
    }

    let photo = image("cat_baseline.jpg");
    let photo = photo.to_str().unwrap();
    let bf16 = run(
        cache.path(),
        &[
            "-vv",
            "classify",
            "--backend",
            "bf16",
            "--weights",
            weights,
            photo,
        ],
    );
    assert!(bf16.status.success(), "{}", stderr(&bf16));
    let path = file.display().to_string();
    assert!(
        stderr(&bf16).contains(&format!("plan: {path}")),
        "the backend's description names the plan: {}",
        stderr(&bf16)
    );
    let inspect = run(cache.path(), &["inspect"]);
    let text = String::from_utf8(inspect.stdout).unwrap();
    assert!(
        text.contains("bf16 plan (auto, batch 1") && text.contains(&path),
        "{text}"
    );
}

#[test]
fn backends_without_plans_are_refused_by_tune() {
    let cache = tempfile::tempdir().unwrap();
    let out = run(
        cache.path(),
        &["tune", "--backend", "gemm", "--budget-s", "1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("per-layer plans exist for the native, int8 and bf16 backends"),
        "{}",
        stderr(&out)
    );
    assert!(plans(cache.path()).is_empty());
}
