//! The KServe v2 inference request parser (binary tensor extension) and response encoder.
//! The harness is `resnet_fuzz::kserve`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("kserve", data));
