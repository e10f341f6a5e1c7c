//! The HTTP service of resnet18-rs. Not written yet: `resnet serve` is tracked by its own issue.
#![forbid(unsafe_code)]
