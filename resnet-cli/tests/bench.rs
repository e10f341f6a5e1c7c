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

/// The bf16 rows' % peak is of the bf16 kernel's own measured peak (`tdpbf16ps` on AMX,
/// `vdpbf16ps` with AVX512-BF16), not of the f32 FMA peak: on an AMX machine the FMA peak put
/// the bf16 backend at 123%.
#[test]
fn bench_takes_the_bf16_rows_percent_of_the_bf16_peak() {
    let out = resnet_with(&[
        &"--threads",
        &"2",
        &"bench",
        &"--weights",
        &synth(),
        &"--backend",
        &"bf16,native",
        &"--batch",
        &"1",
        &"--iters",
        &"1",
        &"--format",
        &"json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bf16_peak = v["bf16_peak_gflops"].as_f64().expect("a bf16 peak");
    let fma_peak = v["peak_gflops"].as_f64().unwrap();
    assert!(bf16_peak > 0.0 && fma_peak > 0.0, "{v}");
    for r in v["rows"].as_array().unwrap() {
        let peak = if r["backend"] == "bf16" {
            bf16_peak
        } else {
            fma_peak
        };
        let want = 100.0 * r["gflops"].as_f64().unwrap() / peak;
        let got = r["percent_of_peak"].as_f64().unwrap();
        // Both from the same f64s: only printing could round them.
        assert!((got - want).abs() <= 1e-9 * want, "{r}: {got} vs {want}");
    }
}
