//! The whole HTTP request path in memory: hyper's parser, the router, limits, query, multipart
//! and chunked bodies, decoding and a real model. Any answer but a well-formed non-500 is a bug.
//! The harness is `resnet_fuzz::http`; `fuzz/tests/regressions.rs` replays saved inputs through it.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| resnet_fuzz::run("http", data));
