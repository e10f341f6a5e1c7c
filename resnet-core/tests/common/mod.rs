//! Helpers shared by resnet-core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testdata/images/<name>`.
pub fn image(name: &str) -> PathBuf {
    repo_root().join("testdata/images").join(name)
}

/// `resnet-core/tests/data/<rel>`.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The good test images (every file of testdata/images but the README).
pub fn good_images() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo_root().join("testdata/images"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (e.file_type().unwrap().is_file() && !name.ends_with(".md")).then_some(name)
        })
        .collect();
    v.sort();
    v
}

/// Max and mean absolute difference of two equally long slices, with the first differing index.
pub fn diff_stats(a: &[f32], b: &[f32]) -> (f32, f64, Option<usize>) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mut max = 0.0f32;
    let mut sum = 0.0f64;
    let mut first = None;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d > 0.0 && first.is_none() {
            first = Some(i);
        }
        max = max.max(d);
        sum += d as f64;
    }
    (max, sum / a.len() as f64, first)
}

/// The ISAs `RESNET_EXPECT_ISA` (a comma list that tools/test.sh derives from /proc/cpuinfo)
/// names and this crate knows; names of other kernel families (`avx512bf16`, `amxint8`, ...)
/// are checked by their own tests. Empty when the variable is unset.
pub fn expected_isas() -> Vec<resnet_core::cpu::Isa> {
    std::env::var("RESNET_EXPECT_ISA")
        .unwrap_or_default()
        .split(',')
        .filter_map(|name| name.trim().parse().ok())
        .collect()
}
