//! The `.pth` reader: zip archive, restricted unpickler, storages and views. Inputs that do not
//! start like a zip archive are given a "PK" prefix so the fuzzer spends its time in the reader.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PK") {
        let _ = resnet_core::weights::read_raw(data, "fuzz.pth");
    } else {
        let mut v = b"PK".to_vec();
        v.extend_from_slice(data);
        let _ = resnet_core::weights::read_raw(&v, "fuzz.pth");
    }
});
