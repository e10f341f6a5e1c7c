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

/// Records what a backend reports at every trace point: `.0` each point's name and NCHW output,
/// `.1` each point and the shape it announced. Checks, for every backend it watches, that the
/// output handed over has the announced shape and that the name is the point's.
#[derive(Default)]
pub struct Capture(
    pub Vec<(String, ndarray::ArrayD<f32>)>,
    pub Vec<(resnet_core::backend::TracePoint, Vec<usize>)>,
);

impl resnet_core::backend::LayerObserver for Capture {
    fn wants_outputs(&self) -> bool {
        true
    }
    fn on_layer(&mut self, e: &resnet_core::backend::LayerEvent<'_>) {
        let out = e.output.as_ref().expect("output requested").to_owned();
        assert_eq!(out.shape(), &e.shape[..], "{}: event shape", e.name);
        assert_eq!(e.name, e.point.name());
        self.0.push((e.name.to_string(), out));
        self.1.push((e.point, e.shape.clone()));
    }
}

/// A seeded batch `[n, 3, h, w]` of values uniform in [-2, 2) (roughly the range of normalised
/// pixels), from a xorshift64 generator: the same seed gives the same batch on every machine.
pub fn random_batch(n: usize, h: usize, w: usize, seed: u64) -> ndarray::Array4<f32> {
    let mut s = seed | 1;
    ndarray::Array4::from_shape_fn((n, 3, h, w), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    })
}
