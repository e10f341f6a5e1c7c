//! The labels-file parser (JSON array or one name per line).
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = resnet_core::labels::Labels::parse(text, "fuzz.txt");
    }
});
