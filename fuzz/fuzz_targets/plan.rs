//! The per-layer plan parser and its validation against the layer table.
//! The harness is `resnet_fuzz::plan`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("plan", data));
