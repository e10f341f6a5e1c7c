//! The MJPEG multipart parser of `resnet watch`, fed in pieces.
//! The harness is `resnet_fuzz::mjpeg`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("mjpeg", data));
