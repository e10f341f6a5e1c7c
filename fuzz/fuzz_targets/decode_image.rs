//! Image decoding (every format) and preprocessing, with the pixel limit on.
//! The harness is `resnet_fuzz::decode_image`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("decode_image", data));
