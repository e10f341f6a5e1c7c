//! `resnet bench` as a real process.

mod common;

use common::{resnet_with, stderr, synth};
use serde_json::Value;

#[test]
fn bench_reports_every_backend_as_json() {
    let out = resnet_with(&[
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
