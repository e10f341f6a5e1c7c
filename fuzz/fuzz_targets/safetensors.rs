//! The safetensors reader and the ResNet-18 weights validation behind it.
//! The harness is `resnet_fuzz::safetensors`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("safetensors", data));
