//! Image decoding (every format) and preprocessing, with a pixel limit, on arbitrary bytes:
//! an error is fine, a panic or an unbounded allocation is a bug.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use resnet_core::decode::{decode_image_bytes, DecodeOptions};

fuzz_target!(|data: &[u8]| {
    let opts = DecodeOptions {
        max_pixels: 4_000_000,
        ..DecodeOptions::default()
    };
    if let Ok(image) = decode_image_bytes(data, "fuzz", &opts) {
        let _ = resnet_core::preprocess::preprocess(&image.rgb);
    }
});
