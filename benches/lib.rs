//! Benchmarks of resnet18-rs live in this package's `[[bench]]` targets; see `cargo bench`.
#![forbid(unsafe_code)]
