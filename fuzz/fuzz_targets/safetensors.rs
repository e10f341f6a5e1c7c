//! The safetensors weights loader (header, dtypes, shapes, ResNet-18 validation).
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet_core::weights::read_raw(data, "fuzz.safetensors");
    let _ = resnet_core::weights::Weights::from_bytes(data, "fuzz.safetensors");
});
