//! The `.pth` reader: zip archive, restricted unpickler, storages and views.
//! The harness is `resnet_fuzz::pth`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("pth", data));
