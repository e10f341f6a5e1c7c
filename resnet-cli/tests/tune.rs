//! `resnet tune` as a user runs it: a plan per backend written into the cache, picked up by the
//! commands that run that backend (`--plan auto`), shown by `inspect`, refused for another
//! backend. Small budgets: the plans' quality is a benchmark matter, not a test's.

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

#[test]
fn an_int8_plan_is_tuned_cached_and_used_by_the_int8_backend_only() {
    let cache = tempfile::tempdir().unwrap();
    let weights = synth().to_str().unwrap();
    let out = run(
        cache.path(),
        &[
            "-q",
            "tune",
            "--backend",
            "int8",
            "--weights",
            weights,
            "--budget-s",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    // One row per convolution (20), each naming an INT8 kernel.
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(" direct ") || l.contains(" in-place "))
        .collect();
    assert_eq!(rows.len(), 20, "{table}");
    assert!(rows.iter().all(|r| r.contains("_i32_")), "{table}");
    let files = plans(cache.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("int8-t") && name.contains("-b1-"),
        "{name}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(plan["backend"], "int8");
    assert_eq!(plan["layers"].as_array().unwrap().len(), 20);
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
    let path = files[0].display().to_string();
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
fn backends_without_plans_are_refused_by_tune() {
    let cache = tempfile::tempdir().unwrap();
    let out = run(
        cache.path(),
        &["tune", "--backend", "bf16", "--budget-s", "1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("per-layer plans exist for the native and int8 backends"),
        "{}",
        stderr(&out)
    );
    assert!(plans(cache.path()).is_empty());
}
