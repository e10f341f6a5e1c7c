//! `resnet quantize` as a real process, and the INT8 model it writes used by `classify` and `trace`.

mod common;

use common::{image, repo, resnet_with, stderr, synth};
use serde_json::Value;

/// The INT8 path from the command line: calibrate on the repo's photos, classify with the
/// quantised file, and see per layer where INT8 error enters against the f32 backend.
#[test]
fn quantize_then_classify_and_trace_int8() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.int8.safetensors");
    let out = resnet_with(&[
        &"quantize",
        &"-q",
        &"--weights",
        &synth(),
        &"--calib",
        &repo().join("testdata/images"),
        &"--crops",
        &"1",
        &"--out",
        &q,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = resnet_with(&[
        &"classify",
        &"--backend",
        &"int8",
        &"--weights",
        &q,
        &"--format",
        &"json",
        &image("cat_24bit.bmp"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["predictions"].as_array().unwrap().len(), 5);
    // A quantised file given to an f32 backend is refused with a clear error.
    let out = resnet_with(&[
        &"classify",
        &"--backend",
        &"native",
        &"--weights",
        &q,
        &image("cat_24bit.bmp"),
    ]);
    assert_eq!(out.status.code(), Some(2));

    let out = resnet_with(&[
        &"trace",
        &"--backend",
        &"int8",
        &"--weights",
        &synth(),
        &"--compare",
        &"native",
        &"--format",
        &"json",
        &image("cat_24bit.bmp"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        // 8-bit activations: ~30-40 dB measured; a broken layer gives ~0 dB.
        let sqnr = r["versus"]["sqnr_db"].as_f64().unwrap();
        assert!(sqnr > 20.0, "{}: {sqnr} dB", r["layer"]);
    }
}
