//! The label-file parser (a JSON array or one name per line).
//! The harness is `resnet_fuzz::labels`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("labels", data));
