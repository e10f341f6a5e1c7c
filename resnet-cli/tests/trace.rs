//! `resnet trace` as a real process: `--dump` against torchvision's activations, `--compare`.

mod common;

use common::{golden, image, repo, resnet_with, stderr, synth};
use serde_json::Value;
use std::path::Path;

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
    let out = resnet_with(&[
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
    let out = resnet_with(&[
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
